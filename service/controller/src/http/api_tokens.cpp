// The API's bearer tokens: the bootstrap token file, roles, and the named tokens (ApiTokens).
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "ota/service/http_api.hpp"
#include "ota/service/log.hpp"

namespace ota::service {

namespace {

// 32 random bytes as 64 lower-case hex characters (an API token secret).
Result<std::string> random_secret() {
  unsigned char raw[32];
  if (RAND_bytes(raw, sizeof raw) != 1) return internal_err("no randomness (RAND_bytes failed)");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  OPENSSL_cleanse(raw, sizeof raw);
  return out;
}

std::string mode_text(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

}  // namespace

Result<std::string> load_or_create_api_token(const std::string& path) {
  auto trim = [](std::string t) {
    const char* ws = " \t\r\n";
    const auto b = t.find_first_not_of(ws);
    if (b == std::string::npos) return std::string();
    return t.substr(b, t.find_last_not_of(ws) - b + 1);
  };
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    auto tok = random_secret();
    if (!tok) {
      ::close(fd);
      ::unlink(path.c_str());
      return internal_err("api token: " + tok.error());
    }
    const std::string line = *tok + "\n";
    const bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) &&
                    ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) {
      ::unlink(path.c_str());
      return internal_err("api token: write " + path + ": " + std::strerror(errno));
    }
    log_info("created API token file " + path + " (mode 0600)");
    return *tok;
  }
  if (errno != EEXIST)
    return invalid_err("api token: create " + path + ": " + std::strerror(errno));
  fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return invalid_err("api token: read " + path + ": " + std::strerror(errno));
  struct stat st {};
  // The file is the bootstrap admin token: whoever can read it controls the fleet.
  if (::fstat(fd, &st) == 0 && (st.st_mode & 077)) {
    ::close(fd);
    return invalid_err("api token file " + path + " has mode " + mode_text(st.st_mode) +
                       ": group or others may access it, and it grants admin access to the API; "
                       "run `chmod 600 " + path +
                       "` (give other readers such as Prometheus their own token: otactl token "
                       "create NAME --role read-only)");
  }
  std::string text;
  char buf[256];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0 && text.size() < 4096)
    text.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  if (n < 0) return invalid_err("api token: read " + path + ": " + std::strerror(errno));
  std::string tok = trim(text);
  if (tok.empty()) return invalid_err("api token: " + path + " is empty");
  if (tok.find_first_of(" \t\r\n") != std::string::npos)
    return invalid_err("api token: " + path + " must hold one token on one line");
  return tok;
}

bool token_equal(const std::string& a, const std::string& b) {
  // Length is not secret (64 hex characters); the contents are compared in constant time.
  if (a.size() != b.size() || a.empty()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) return {};
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

const char* role_name(Role r) {
  switch (r) {
    case Role::read_only: return "read-only";
    case Role::operator_: return "operator";
    case Role::admin: return "admin";
  }
  return "?";
}

std::optional<Role> parse_role(const std::string& name) {
  for (Role r : {Role::read_only, Role::operator_, Role::admin})
    if (name == role_name(r)) return r;
  return std::nullopt;
}

bool valid_token_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-' && c != '@')
      return false;
  return true;
}

// ------------------------------------------------------------------------------ ApiTokens

Result<std::unique_ptr<ApiTokens>> ApiTokens::open(const std::string& db_path,
                                                   const std::string& bootstrap_secret) {
  if (bootstrap_secret.empty()) return invalid_err("api tokens: the bootstrap token is empty");
  std::unique_ptr<ApiTokens> t(new ApiTokens());
  // The Controller opened this file a moment ago and checked it; a second quick_check of a
  // large database would only delay the start.
  Status s = t->store_.open(db_path, kSchemaVersion, /*check_integrity=*/false);
  if (!s) return s.context("api tokens");
  auto rows = t->store_.list_api_tokens();
  if (!rows) return rows.context("api tokens");
  for (auto& r : *rows) {
    if (!parse_role(r.role)) return internal_err("api tokens: token '" + r.name + "' has unknown role '" + r.role + "'");
    t->by_sha256_[r.sha256] = std::move(r);
  }
  t->bootstrap_sha256_ = sha256_hex(bootstrap_secret);
  return t;
}

std::optional<ApiTokens::Identity> ApiTokens::authenticate(const std::string& secret) const {
  if (secret.empty()) return std::nullopt;
  // Only hashes are compared: a lookup's timing says something about SHA-256(secret), which
  // does not help to guess a secret.
  const std::string h = sha256_hex(secret);
  if (token_equal(h, bootstrap_sha256_)) return Identity{kBootstrapTokenName, Role::admin};
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_sha256_.find(h);
  if (it == by_sha256_.end()) return std::nullopt;
  return Identity{it->second.name, parse_role(it->second.role).value_or(Role::read_only)};
}

Result<ApiTokens::Created> ApiTokens::create(const std::string& name, Role role,
                                             const std::string& actor) {
  if (!valid_token_name(name))
    return invalid_err("token name '" + name + "' is not 1-64 characters of A-Z a-z 0-9 . _ @ -");
  if (name == kBootstrapTokenName)
    return conflict_err("'" + name + "' is the token in the controller's --api-token-file");
  auto secret = random_secret();
  if (!secret) return secret.context("create token");
  Created c;
  c.secret = *secret;
  c.token.name = name;
  c.token.role = role_name(role);
  c.token.sha256 = sha256_hex(c.secret);
  c.token.created_at = now_s();
  c.token.created_by = actor;
  {
    std::lock_guard<std::mutex> lock(store_mu_);
    Tx tx(store_);
    if (!tx.status()) return tx.status().context("create token");
    Status s = store_.insert_api_token(c.token);
    if (!s) return s.kind() == ErrKind::conflict ? s.err() : s.context("create token");
    s = store_.add_event("", "", "token_created", name + " (" + c.token.role + ")", actor);
    if (!s) return s.context("create token");
    s = tx.commit();
    if (!s) return s.context("create token");
  }
  std::lock_guard<std::mutex> lock(mu_);
  by_sha256_[c.token.sha256] = c.token;
  return c;
}

Status ApiTokens::revoke(const std::string& name, const std::string& actor) {
  if (name == kBootstrapTokenName)
    return conflict_err("the bootstrap token is the controller's --api-token-file and cannot be "
                        "revoked through the API: write a new token into that file (or delete "
                        "it: the controller creates a new one) and restart the controller");
  // One revoke or create at a time (store_mu_), requests keep authenticating meanwhile (mu_).
  std::lock_guard<std::mutex> store_lock(store_mu_);
  std::string role;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find_if(by_sha256_.begin(), by_sha256_.end(),
                           [&](const auto& kv) { return kv.second.name == name; });
    if (it == by_sha256_.end()) return not_found_err("no token named '" + name + "'");
    role = it->second.role;
  }
  {
    Tx tx(store_);
    if (!tx.status()) return tx.status().context("revoke token");
    auto deleted = store_.delete_api_token(name);
    if (!deleted) return deleted.context("revoke token");
    Status s = store_.add_event("", "", "token_revoked", name + " (" + role + ")", actor);
    if (!s) return s.context("revoke token");
    s = tx.commit();
    if (!s) return s.context("revoke token");
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = by_sha256_.begin(); it != by_sha256_.end(); ++it)
    if (it->second.name == name) {
      by_sha256_.erase(it);
      break;
    }
  return {};
}

std::vector<ApiTokenRec> ApiTokens::list() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ApiTokenRec> out;
  for (const auto& kv : by_sha256_) out.push_back(kv.second);
  std::sort(out.begin(), out.end(),
            [](const ApiTokenRec& a, const ApiTokenRec& b) { return a.name < b.name; });
  return out;
}

}  // namespace ota::service
