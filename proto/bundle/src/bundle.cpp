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

// Not strchr("._+@=,~-", c): strchr also finds the string's terminating NUL, so '\0' passed
// as a path character, and "wifi.json\0" (valid JSON: "wifi.json\u0000") opened "wifi.json"
// on the device, past the protected-path check.
bool path_char(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '.':
    case '_':
    case '+':
    case '@':
    case '=':
    case ',':
    case '~':
    case '-':
      return true;
    default:
      return false;
  }
}

// Attacker-controlled text for an error message: printable ASCII as is, every other byte as
// \xNN. The messages are logged, printed and sent as JSON: a raw NUL would cut them short and
// a UTF-8 sequence cut in the middle would make them invalid JSON text.
std::string printable(const std::string& s, std::size_t max_bytes = kMaxPathLen) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < max_bytes; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  if (s.size() > max_bytes) out += "...";
  return out;
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
    if (paths[i] == paths[i + 1]) {
      return std::string("duplicate ") + what + " '" + printable(paths[i]) + "'";
    }
  }
  // After sorting, a path P is directly followed by its descendants "P/..." unless another
  // path sorts between (e.g. "P-x" < "P/x"); check every P against the set.
  std::set<std::string> set(paths.begin(), paths.end());
  for (const auto& p : paths) {
    for (std::size_t slash = p.find('/'); slash != std::string::npos;
         slash = p.find('/', slash + 1)) {
      const std::string dir = p.substr(0, slash);
      if (set.count(dir) != 0) {
        return std::string(what) + " '" + printable(dir) + "' is also a directory of '" +
               printable(p) + "'";
      }
    }
  }
  return "";
}

// What the JSON reader lets through and the format does not: a member name twice in one
// object (the reader keeps the last value, another decoder may keep the first: the same
// signed bytes would mean two different bundles) and nesting deeper than the index's own
// (index > files > file; anything deeper is an unknown member anyway, and refusing it here
// stops the parse early instead of building a deep tree). Runs as a SAX pass before the DOM.
class IndexShapeCheck final : public nlohmann::json_sax<nlohmann::json> {
 public:
  static constexpr std::size_t kMaxDepth = 3;
  std::string error;

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    if (!enter()) return false;
    keys_.emplace_back();
    return true;
  }
  bool key(string_t& name) override {
    if (!keys_.back().insert(name).second) {
      error = "bundle index has a duplicate member '" + printable(name) + "'";
      return false;
    }
    return true;
  }
  bool end_object() override {
    keys_.pop_back();
    --depth_;
    return true;
  }
  bool start_array(std::size_t) override { return enter(); }
  bool end_array() override {
    --depth_;
    return true;
  }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception&) override {
    error = "bundle index is not valid JSON (at byte " + std::to_string(position) + ")";
    return false;
  }

 private:
  bool enter() {
    if (++depth_ > kMaxDepth) {
      error = "bundle index is nested deeper than 3 levels (index, files, file)";
      return false;
    }
    return true;
  }
  std::size_t depth_ = 0;
  std::vector<std::set<std::string>> keys_;  // member names of each open object
};

}  // namespace

std::string check_path(const std::string& path) {
  if (path.empty()) return "empty path";
  if (path.size() > kMaxPathLen) {
    return "path '" + printable(path, 40) + "' is longer than " + std::to_string(kMaxPathLen) +
           " bytes";
  }
  if (path[0] == '/') return "path '" + printable(path) + "' is absolute";
  std::size_t start = 0;
  for (;;) {
    const std::size_t slash = path.find('/', start);
    const std::string comp =
        path.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (comp.empty()) return "path '" + printable(path) + "' has an empty component";
    if (comp == "." || comp == "..") {
      return "path '" + printable(path) + "' has a '" + comp + "' component";
    }
    for (char c : comp) {
      if (!path_char(c)) {
        return "path '" + printable(path) + "' has a character outside [A-Za-z0-9._+@=,~-/]";
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
  // The JSON reader takes a raw NUL for the end of its input and would ignore the rest of the
  // index. JSON text never holds one (in a string it must be escaped): refuse it.
  if (const void* nul = std::memchr(json_text, '\0', len); nul != nullptr) {
    return "bundle index has a NUL byte at index offset " +
           std::to_string(static_cast<const char*>(nul) - json_text) + " (not valid JSON)";
  }
  IndexShapeCheck shape;
  if (!nlohmann::json::sax_parse(json_text, json_text + len, &shape)) {
    return shape.error.empty() ? "bundle index is not valid JSON" : shape.error;
  }
  const nlohmann::json j = nlohmann::json::parse(json_text, json_text + len, nullptr, false);
  if (j.is_discarded()) return "bundle index is not valid JSON";
  if (!j.is_object()) return "bundle index is not a JSON object";
  for (const auto& item : j.items()) {
    if (item.key() != "files" && item.key() != "delete") {
      return "bundle index has an unknown key '" + printable(item.key()) + "'";
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
        return where + " has an unknown key '" + printable(k) + "'";
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
      if (!seen.insert(p).second) {
        return "bundle index: duplicate delete '" + printable(p) + "'";
      }
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
        return "file '" + printable(f.path) + "': content does not match its sha256";
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
    if (f.mode > 0777) {
      return "file '" + printable(f.path) + "': mode has bits other than permissions";
    }
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
    if (i > 0 && deletes[i] == deletes[i - 1]) {
      return "duplicate delete '" + printable(deletes[i]) + "'";
    }
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
