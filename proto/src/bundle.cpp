#include "ota/proto/bundle.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

namespace ota::proto::bundle {
namespace {

void put_u32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 0xffu);
}

std::uint32_t get_u32(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
         static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}

bool path_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::strchr("._+@=,~-", c) != nullptr;
}

bool is_hex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// Files must not double as directories of other files ("a" and "a/b"). `paths` sorted.
std::string check_no_file_is_directory(std::vector<std::string> paths, const char* what) {
  std::sort(paths.begin(), paths.end());
  for (std::size_t i = 0; i + 1 < paths.size(); ++i) {
    if (paths[i] == paths[i + 1]) return std::string("duplicate ") + what + " '" + paths[i] + "'";
  }
  // After sorting, a path P is directly followed by its descendants "P/..." unless another
  // path sorts between (e.g. "P-x" < "P/x"); check every P against the set.
  std::set<std::string> set(paths.begin(), paths.end());
  for (const auto& p : paths) {
    for (std::size_t slash = p.find('/'); slash != std::string::npos;
         slash = p.find('/', slash + 1)) {
      const std::string dir = p.substr(0, slash);
      if (set.count(dir) != 0) {
        return std::string(what) + " '" + dir + "' is also a directory of '" + p + "'";
      }
    }
  }
  return "";
}

}  // namespace

std::string check_path(const std::string& path) {
  if (path.empty()) return "empty path";
  if (path.size() > kMaxPathLen) {
    return "path '" + path.substr(0, 40) + "...' is longer than " + std::to_string(kMaxPathLen) +
           " bytes";
  }
  if (path[0] == '/') return "path '" + path + "' is absolute";
  std::size_t start = 0;
  for (;;) {
    const std::size_t slash = path.find('/', start);
    const std::string comp =
        path.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (comp.empty()) return "path '" + path + "' has an empty component";
    if (comp == "." || comp == "..") return "path '" + path + "' has a '" + comp + "' component";
    for (char c : comp) {
      if (!path_char(c)) {
        return "path '" + path + "' has a character outside [A-Za-z0-9._+@=,~-/]";
      }
    }
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return "";
}

std::string parse_header(const std::uint8_t* data, std::size_t len, std::uint32_t& index_len) {
  if (len < kHeaderSize) return "bundle header truncated: " + std::to_string(len) + " of 12 bytes";
  if (std::memcmp(data, kMagic, 4) != 0) return "not a bundle: magic is not \"OTAB\"";
  const std::uint32_t version = get_u32(data + 4);
  if (version != kFormatVersion) {
    return "bundle format version " + std::to_string(version) + " is not supported (only 1)";
  }
  index_len = get_u32(data + 8);
  if (index_len == 0 || index_len > kMaxIndexSize) {
    return "bundle index length " + std::to_string(index_len) + " is outside 1.." +
           std::to_string(kMaxIndexSize);
  }
  return "";
}

std::string parse_index(const char* json_text, std::size_t len, Index& out) {
  out = Index{};
  const nlohmann::json j = nlohmann::json::parse(json_text, json_text + len, nullptr, false);
  if (j.is_discarded()) return "bundle index is not valid JSON";
  if (!j.is_object()) return "bundle index is not a JSON object";
  for (const auto& item : j.items()) {
    if (item.key() != "files" && item.key() != "delete") {
      return "bundle index has an unknown key '" + item.key() + "'";
    }
  }
  if (!j.contains("files") || !j["files"].is_array()) {
    return "bundle index: \"files\" is missing or not an array";
  }
  const auto& files = j["files"];
  if (files.size() > kMaxFiles) return "bundle index: more than 65536 files";
  out.data_offset = kHeaderSize + len;
  std::uint64_t offset = out.data_offset;
  std::vector<std::string> paths;
  for (std::size_t i = 0; i < files.size(); ++i) {
    const auto& f = files[i];
    const std::string where = "bundle index: files[" + std::to_string(i) + "]";
    if (!f.is_object()) return where + " is not an object";
    for (const auto& item : f.items()) {
      const std::string& k = item.key();
      if (k != "path" && k != "size" && k != "mode" && k != "sha256") {
        return where + " has an unknown key '" + k + "'";
      }
    }
    FileEntry e;
    if (!f.contains("path") || !f["path"].is_string()) return where + ".path is missing";
    e.path = f["path"].get<std::string>();
    if (std::string err = check_path(e.path); !err.empty()) return where + ".path: " + err;
    if (!f.contains("size") || !f["size"].is_number_unsigned()) {
      return where + ".size is missing or not a non-negative integer";
    }
    e.size = f["size"].get<std::uint64_t>();
    if (e.size > (1ull << 40)) return where + ".size is too large";
    if (f.contains("mode")) {
      if (!f["mode"].is_number_unsigned() || f["mode"].get<std::uint64_t>() > 0777) {
        return where + ".mode must be an integer 0..0777 (permission bits)";
      }
      e.mode = f["mode"].get<std::uint32_t>();
    }
    if (!f.contains("sha256") || !f["sha256"].is_string() ||
        !is_hex64(f["sha256"].get<std::string>())) {
      return where + ".sha256 must be 64 lower-case hex digits";
    }
    e.sha256 = f["sha256"].get<std::string>();
    e.offset = offset;
    offset += e.size;
    paths.push_back(e.path);
    out.files.push_back(std::move(e));
  }
  if (std::string err = check_no_file_is_directory(paths, "file"); !err.empty()) {
    return "bundle index: " + err;
  }
  if (j.contains("delete")) {
    const auto& del = j["delete"];
    if (!del.is_array()) return "bundle index: \"delete\" is not an array";
    if (del.size() > kMaxDeletes) return "bundle index: more than 65536 deletes";
    std::set<std::string> seen;
    for (std::size_t i = 0; i < del.size(); ++i) {
      const std::string where = "bundle index: delete[" + std::to_string(i) + "]";
      if (!del[i].is_string()) return where + " is not a string";
      std::string p = del[i].get<std::string>();
      if (std::string err = check_path(p); !err.empty()) return where + ": " + err;
      if (!seen.insert(p).second) return "bundle index: duplicate delete '" + p + "'";
      out.deletes.push_back(std::move(p));
    }
  }
  out.total_size = offset;
  return "";
}

std::string parse(const std::string& bytes, Index& out, bool check_hashes) {
  std::uint32_t index_len = 0;
  const auto* p = reinterpret_cast<const std::uint8_t*>(bytes.data());
  if (std::string err = parse_header(p, bytes.size(), index_len); !err.empty()) return err;
  if (bytes.size() < kHeaderSize + index_len) {
    return "bundle index truncated: " + std::to_string(bytes.size() - kHeaderSize) + " of " +
           std::to_string(index_len) + " bytes";
  }
  if (std::string err = parse_index(bytes.data() + kHeaderSize, index_len, out); !err.empty()) {
    return err;
  }
  if (bytes.size() != out.total_size) {
    return "bundle is " + std::to_string(bytes.size()) + " bytes, its index says " +
           std::to_string(out.total_size);
  }
  if (check_hashes) {
    for (const auto& f : out.files) {
      if (sha256_hex(bytes.data() + f.offset, static_cast<std::size_t>(f.size)) != f.sha256) {
        return "file '" + f.path + "': content does not match its sha256";
      }
    }
  }
  return "";
}

std::string build(std::vector<InputFile> files, std::vector<std::string> deletes,
                  std::string& out) {
  std::sort(files.begin(), files.end(),
            [](const InputFile& a, const InputFile& b) { return a.path < b.path; });
  std::sort(deletes.begin(), deletes.end());
  std::vector<std::string> paths;
  nlohmann::json jf = nlohmann::json::array();
  for (const auto& f : files) {
    if (std::string err = check_path(f.path); !err.empty()) return err;
    if (f.mode > 0777) return "file '" + f.path + "': mode has bits other than permissions";
    paths.push_back(f.path);
    jf.push_back({{"path", f.path},
                  {"size", f.data.size()},
                  {"mode", f.mode},
                  {"sha256", sha256_hex(f.data.data(), f.data.size())}});
  }
  if (files.size() > kMaxFiles) return "more than 65536 files";
  if (std::string err = check_no_file_is_directory(paths, "file"); !err.empty()) return err;
  for (std::size_t i = 0; i < deletes.size(); ++i) {
    if (std::string err = check_path(deletes[i]); !err.empty()) return "delete: " + err;
    if (i > 0 && deletes[i] == deletes[i - 1]) return "duplicate delete '" + deletes[i] + "'";
  }
  nlohmann::json index = {{"files", jf}, {"delete", deletes}};
  const std::string text = index.dump();
  if (text.size() > kMaxIndexSize) return "bundle index larger than 4 MiB";
  out.clear();
  out.append(kMagic, 4);
  put_u32(out, kFormatVersion);
  put_u32(out, static_cast<std::uint32_t>(text.size()));
  out += text;
  for (const auto& f : files) out += f.data;
  return "";
}

std::string sha256_hex(const void* data, std::size_t len) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data, len, digest, &n, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

bool paths_overlap(const std::string& a, const std::string& b) {
  auto under = [](const std::string& child, const std::string& dir) {
    return child.size() > dir.size() && child.compare(0, dir.size(), dir) == 0 &&
           child[dir.size()] == '/';
  };
  return a == b || under(a, b) || under(b, a);
}

}  // namespace ota::proto::bundle
