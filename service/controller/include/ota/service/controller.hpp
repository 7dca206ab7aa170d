// The fleet controller: device message handling, image store, deployments, chunk serving.
// Thread-safe: MQTT callbacks, HTTP handlers and the periodic tick may run concurrently.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ota/service/images.hpp"
#include "ota/service/result.hpp"
#include "ota/service/signing.hpp"
#include "ota/service/store.hpp"

namespace ota::service {

// Where the controller sends MQTT messages (the real client, or a recorder in tests).
class Publisher {
 public:
  virtual ~Publisher() = default;
  virtual bool publish(const std::string& topic, const void* data, std::size_t len, int qos,
                       bool retain) = 0;
};

struct ControllerConfig {
  std::string db_path;
  std::string store_dir;
  std::string prefix = "ota/v1";
  long long offer_ttl = 604800;
  // Lazy flush of progress/bytes_sent: at most every flush_interval_ms per row, or on 10%.
  long long flush_interval_ms = 1000;
};

struct ImageFile;  // open fd + geometry of a stored image

struct AddImageResult {
  ImageRec image;
  bool created = false;
};

class Controller {
 public:
  // Opens the database and the store; loads active deployments.
  static Result<std::unique_ptr<Controller>> create(const ControllerConfig& cfg, Signer signer,
                                                    Publisher* pub);
  ~Controller();
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  // --- operator actions
  Result<AddImageResult> add_image(const std::string& bytes, const ImageParams& p);
  // image_ref: image id or version; kind "device" | "group".
  Result<DeploymentRec> deploy(const std::string& image_ref, const std::string& kind,
                               const std::string& target);
  Result<DeploymentRec> cancel(const std::string& deployment_id);
  // Forgets the device's last event seq (after a factory reset of its counter).
  Status reset_seq(const std::string& device_id);

  // --- MQTT side
  void on_message(const char* topic, const void* payload, std::size_t len);
  void on_connected();  // after (re)connect+subscribe: re-publish retained group offers
  void tick();          // periodic: flush lazy counters

  // --- queries (JSON as served by the HTTP API)
  Result<nlohmann::json> images_json();
  Result<nlohmann::json> image_json(const std::string& id_or_version);
  Result<nlohmann::json> deployments_json();
  Result<nlohmann::json> deployment_json(const std::string& id);
  Result<nlohmann::json> devices_json(const DeviceFilter& f);
  Result<nlohmann::json> device_json(const std::string& id);
  Result<nlohmann::json> status_json();
  Result<nlohmann::json> events_json(const EventFilter& f);

  static nlohmann::json to_json(const ImageRec& r);
  static nlohmann::json to_json(const DeviceRec& r);

  std::uint64_t decode_errors() const { return decode_errors_.load(); }
  std::uint64_t chunks_sent() const { return chunks_sent_.load(); }
  const std::string& prefix() const { return cfg_.prefix; }
  const std::string& key_id() const { return signer_.key_id(); }

 private:
  struct RowMem {
    RowRec rec;
    bool dirty = false;
    long long last_flush_ms = 0;
    int last_pct_bucket = -1;
  };
  struct DepMem {
    DeploymentRec rec;
    ImageRec image;
    std::shared_ptr<ImageFile> file;
    std::map<std::string, RowMem> rows;  // by device id
  };

  Controller(ControllerConfig cfg, Signer signer, Publisher* pub);
  Status load();
  Result<std::shared_ptr<ImageFile>> open_image(const ImageRec& img);
  Result<ImageRec> resolve_image(const std::string& ref);

  void handle_presence(const std::string& dev, const char* p, std::size_t len,
                       const char* topic);
  void handle_event(const std::string& dev, const char* p, std::size_t len, const char* topic);
  void handle_chunk_request(const std::string& dev, const char* p, std::size_t len,
                            const char* topic);
  void decode_error(const std::string& dev, const char* topic, const char* what, int code,
                    const char* field);

  // Must hold mu_.
  bool publish_offer_to_device(const DepMem& d, const std::string& dev);
  void publish_group_offer(const DepMem& d, bool clear);
  Status write_row(RowMem& row);  // writes the row now, marks clean
  Status set_row_state(DepMem& d, RowMem& row, const std::string& state,
                       const std::string& reason);
  // Finishes the deployment when every row is final (erases it from active_).
  void maybe_complete(const std::string& dep_id);
  void flush_dirty(bool force);
  bool in_group(const std::string& dev, const std::string& group) const;
  std::optional<RowRec> finished_row(const std::string& dep_id, const std::string& dev);
  bool explained_version(const std::string& dev, const std::string& version,
                         const std::optional<std::string>& previous);
  std::string topic_for(int kind, const std::string& id) const;
  nlohmann::json deployment_to_json(const DeploymentRec& d, bool with_rows);
  void event(const std::string& dep, const std::string& dev, const std::string& what,
             const std::string& detail);

  ControllerConfig cfg_;
  Signer signer_;
  Publisher* pub_;
  std::mutex mu_;
  Store store_;
  std::map<std::string, DepMem> active_;                       // active deployments by id
  std::map<std::string, std::vector<std::string>> dev_groups_;  // device -> groups
  std::map<std::string, long long> dev_seq_;                    // device -> last seq
  std::map<std::string, std::string> dev_version_;              // device -> running version
  std::map<std::string, std::shared_ptr<ImageFile>> files_;     // image id -> open file
  std::set<std::string> logged_refusals_;                       // "dev|dep" refused chunk reqs
  std::atomic<std::uint64_t> decode_errors_{0};
  std::atomic<std::uint64_t> chunks_sent_{0};
};

}  // namespace ota::service
