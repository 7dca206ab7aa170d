#include "ota/agent/linux/file_storage.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "ota/agent/linux/atomic_file.hpp"

namespace ota::agent::linux_port {

PortStatus FileStorage::load(void* out, std::size_t cap, std::size_t& len) {
  std::string data;
  if (!read_whole_file(path_, data)) return errno == ENOENT ? PortStatus::not_found : PortStatus::error;
  len = data.size();
  if (len > cap) return PortStatus::error;
  std::memcpy(out, data.data(), len);
  return PortStatus::ok;
}

PortStatus FileStorage::save(const void* data, std::size_t len) {
  if (write_file_atomically(path_, data, len, durable_)) return PortStatus::ok;
  return errno == ENOSPC ? PortStatus::no_space
                         : (errno == EROFS || errno == EACCES ? PortStatus::read_only
                                                              : PortStatus::error);
}

PortStatus FileStorage::erase() {
  return (std::remove(path_.c_str()) == 0 || errno == ENOENT) ? PortStatus::ok : PortStatus::error;
}

}  // namespace ota::agent::linux_port
