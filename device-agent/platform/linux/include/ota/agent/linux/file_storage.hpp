#pragma once

#include <string>

#include "ota/agent/ports.hpp"

namespace ota::agent::linux_port {

// Storage port on one file, replaced atomically on every save.
class FileStorage final : public Storage {
 public:
  explicit FileStorage(std::string path, bool durable = true)
      : path_(std::move(path)), durable_(durable) {}
  PortStatus load(void* out, std::size_t cap, std::size_t& len) override;
  PortStatus save(const void* data, std::size_t len) override;
  PortStatus erase() override;

 private:
  std::string path_;
  bool durable_;
};

}  // namespace ota::agent::linux_port
