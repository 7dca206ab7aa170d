#include "ota/agent/linux/boot_state_file.hpp"

#include <cerrno>
#include <cstdlib>
#include <sstream>

namespace ota::agent::linux_port {
namespace {

char slot_char(const std::string& v) {
  return v.empty() ? 0 : v[0];
}
std::string slot_text(char c) {
  return c == 0 ? std::string() : std::string(1, c);
}

bool parse_u32(const std::string& v, std::uint32_t& out) {
  if (v.empty() || v[0] < '0' || v[0] > '9') return false;
  errno = 0;
  char* end = nullptr;
  const unsigned long n = std::strtoul(v.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || n > 0xffffffffUL) return false;
  out = static_cast<std::uint32_t>(n);
  return true;
}

}  // namespace

std::string format_boot_state(const BootStateFile& file) {
  const sim_boot::Record& r = file.record;
  std::ostringstream out;
  if (file.bundle) out << "kind=bundle\n";
  out << "active=" << slot_text(r.active) << "\npending=" << slot_text(r.pending)
      << "\ntrial_boots=" << r.trial_boots << "\nmax_trial_boots=" << r.max_trial_boots
      << "\nrejected=" << (r.rejected ? 1 : 0) << "\nrolled_back=" << (r.rolled_back ? 1 : 0)
      << "\nwriting=" << slot_text(r.writing) << "\n";
  if (file.bundle) out << "writing_image=" << file.writing_image << "\n";
  out << "version_a=" << r.version_a.c_str() << "\nversion_b=" << r.version_b.c_str()
      << "\nsha256_a=" << r.sha256_a.c_str() << "\nsha256_b=" << r.sha256_b.c_str()
      << "\ncounter=" << r.counter << "\npending_counter=" << r.pending_counter << "\n";
  return out.str();
}

bool parse_boot_state(const std::string& text, BootStateFile& out) {
  std::istringstream in(text);
  std::string line;
  BootStateFile f;
  sim_boot::Record& r = f.record;
  bool ok = true;
  while (ok && std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    const std::string key = line.substr(0, eq), value = line.substr(eq + 1);
    if (key == "kind")
      f.bundle = value == "bundle";
    else if (key == "active")
      r.active = slot_char(value);
    else if (key == "pending")
      r.pending = slot_char(value);
    else if (key == "trial_booted")
      r.trial_boots = value == "1" ? 1 : 0;  // before bootcount
    else if (key == "trial_boots")
      ok = parse_u32(value, r.trial_boots);
    else if (key == "max_trial_boots")
      ok = parse_u32(value, r.max_trial_boots);
    else if (key == "rejected")
      r.rejected = value == "1";
    else if (key == "rolled_back")
      r.rolled_back = value == "1";
    else if (key == "writing")
      r.writing = slot_char(value);
    else if (key == "writing_image")
      f.writing_image = value;
    else if (key == "version_a")
      ok = r.version_a.assign(value.c_str());
    else if (key == "version_b")
      ok = r.version_b.assign(value.c_str());
    else if (key == "sha256_a")
      ok = r.sha256_a.assign(value.c_str());
    else if (key == "sha256_b")
      ok = r.sha256_b.assign(value.c_str());
    else if (key == "counter")
      ok = parse_u32(value, r.counter);
    else if (key == "pending_counter")
      ok = parse_u32(value, r.pending_counter);
  }
  if (!ok || (r.active != 'a' && r.active != 'b')) return false;
  out = f;
  return true;
}

}  // namespace ota::agent::linux_port
