// otactl's client of the ota-controller HTTP API: the --api URL, the API token, one request
// and its reply (JSON, or the reason it failed), and the exit codes every command shares.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "ota/url_encode.hpp"

namespace httplib {
class Client;
}

namespace otactl {

using nlohmann::json;

// Exit codes (kExitCodeTable says what each means: `otactl --help` shows it).
constexpr int kExitOk = 0;
constexpr int kExitFail = 1;
constexpr int kExitUsage = 2;
constexpr int kExitTimeout = 3;
extern const char* const kExitCodeTable;

// "otactl: MSG" on stderr.
void errorf(const std::string& msg);

using ota::url_encode;  // ids in paths, values in queries

struct Url {
  std::string scheme, host;
  int port = 0;
};

// http[s]://HOST[:PORT][/] (HOST may be [IPv6]); false with `why` set.
bool parse_url(const std::string& s, Url& u, std::string& why);

// The API token: --token-file PATH, else $OTA_API_TOKEN (the token itself), else
// $OTA_API_TOKEN_FILE. Returns false with `why` set if none is configured or readable;
// `source` names where it came from ("OTA_API_TOKEN", "--token-file t.txt").
bool find_token(const std::string& token_file_opt, std::string& token, std::string& why,
                std::string* source = nullptr);

struct Reply {
  bool ok = false;  // HTTP 2xx with JSON
  int status = 0;   // 0: no HTTP reply at all
  json body;
  int exit_code = kExitFail;
  std::string error;
};

class Api {
 public:
  // token_source: where the token came from, for the message of a 401.
  Api(std::string base, Url u, const std::string& token, std::string token_source);
  ~Api();
  Api(const Api&) = delete;
  Api& operator=(const Api&) = delete;

  Reply get(const std::string& path);
  Reply post(const std::string& path, const std::string& body, const char* type);
  Reply post_json(const std::string& path, const json& body);
  Reply put_json(const std::string& path, const json& body);
  Reply put_raw(const std::string& path, const std::string& body);
  Reply del(const std::string& path);
  const std::string& base() const { return base_; }
  // GET of a binary body: on HTTP 200 `bytes` holds it; otherwise the reply explains.
  Reply download(const std::string& path, std::string& bytes);

 private:
  std::string base_;
  Url url_;
  std::string token_source_;
  std::unique_ptr<httplib::Client> cli_;
};

// Prints the reply's error; its exit code (never kExitOk).
int fail(const Reply& r);

// The API at `url` (given by `url_source`: "--api" or "OTA_API") with the token find_token
// finds: kExitOk, or the exit code after the error was printed (kExitUsage: a bad URL;
// kExitFail: no usable token).
int open_api(const std::string& url, const std::string& url_source, const std::string& token_file,
             std::unique_ptr<Api>& api);

}  // namespace otactl
