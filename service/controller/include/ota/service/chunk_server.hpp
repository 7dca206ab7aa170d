// Chunk server: reads image chunks and publishes them to the devices that ask.
//
// Owns: the open image files (by image id); each device's last served chunk request (an
//   identical repeat within kDuplicateRequestMs is answered once); the serving counters.
//   This is where flow control and broadcast of chunks will go.
// Lock: mu_, a leaf. Reading the file and publishing happen outside it.
// Threads: MQTT network thread (serve), HTTP workers and the tick thread (open an image for
//   a new deployment).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "ota/proto/messages.hpp"
#include "ota/service/publisher.hpp"
#include "ota/service/result.hpp"
#include "ota/service/store.hpp"

namespace ota::service {

// An open stored image: its descriptor and geometry.
struct ImageFile {
  int fd = -1;
  std::uint64_t size = 0;
  std::uint32_t chunk_size = 0;
  std::uint8_t id[8] = {};
  std::string path;
  ImageFile() = default;
  ImageFile(const ImageFile&) = delete;
  ImageFile& operator=(const ImageFile&) = delete;
  ~ImageFile();
};

class ChunkServer {
 public:
  static constexpr long long kDuplicateRequestMs = 200;

  ChunkServer(std::string store_dir, std::string prefix, Publisher* pub);
  ChunkServer(const ChunkServer&) = delete;
  ChunkServer& operator=(const ChunkServer&) = delete;

  // The stored file of `img`, opened once and shared by every deployment of it.
  Result<std::shared_ptr<ImageFile>> open(const ImageRec& img);
  // True if `dev` sent this same request less than kDuplicateRequestMs ago (counted as a
  // duplicate; after an outage a device may re-request the same window several times);
  // otherwise remembers it as the device's last request.
  bool repeated(const std::string& dev, const proto::ChunkRequest& req, long long now_ms);
  // Reads the chunks `req` asks for and publishes them to `dev`. Returns the payload bytes
  // sent (it stops at the first read or publish failure).
  std::uint64_t serve(const std::string& dev, const ImageFile& file, const proto::ChunkRequest& req);

  std::uint64_t chunks_sent() const { return chunks_sent_.load(); }
  std::uint64_t bytes_served() const { return bytes_served_.load(); }
  std::uint64_t duplicate_requests() const { return duplicate_requests_.load(); }

 private:
  const std::string store_dir_;
  const std::string prefix_;
  Publisher* const pub_;

  std::mutex mu_;
  std::map<std::string, std::shared_ptr<ImageFile>> files_;  // image id -> open file
  struct LastRequest {
    std::string key;
    long long ms = 0;
  };
  std::map<std::string, LastRequest> last_request_;  // device -> last served request

  std::atomic<std::uint64_t> chunks_sent_{0};
  std::atomic<std::uint64_t> bytes_served_{0};
  std::atomic<std::uint64_t> duplicate_requests_{0};
};

}  // namespace ota::service
