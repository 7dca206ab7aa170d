// The boot.state file of the Linux flashes (FileFlash, BundleFlash): the simulated boot
// loader's record as key=value lines. The owner reads and replaces the file (atomically);
// this owns only the text, so both flashes keep one format.
#pragma once

#include <string>

#include "ota/agent/sim_boot.hpp"

namespace ota::agent::linux_port {

struct BootStateFile {
  sim_boot::Record record;
  // BundleFlash only (written with kind=bundle): SHA-256 of the bundle the tree being written
  // comes from, so a resumed begin() keeps a partial tree only for the same bundle.
  bool bundle = false;
  std::string writing_image;
};

std::string format_boot_state(const BootStateFile& file);
// False when the text is no boot record (no valid active slot, a malformed number, a value
// longer than the record holds). Missing keys keep their defaults, so files of older layouts
// load: trial_booted=1 from before trial boots were counted, no sha256_a/sha256_b.
bool parse_boot_state(const std::string& text, BootStateFile& out);

}  // namespace ota::agent::linux_port
