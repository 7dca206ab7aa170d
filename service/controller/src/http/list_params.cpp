// The query parameters every list endpoint takes: a page (limit, offset), its own filters,
// and nothing else (a misspelt or unsupported parameter is a 400, not silently ignored).
#include <algorithm>
#include <vector>

#include "ota/url_encode.hpp"
#include "routes.hpp"

namespace ota::service::http {

std::string next_link(const httplib::Request& req, const std::string& key, long long value) {
  std::string query;
  for (const auto& [k, v] : req.params) {
    if (k == key) continue;
    query += (query.empty() ? "?" : "&") + ota::url_encode(k) + "=" + ota::url_encode(v);
  }
  return "<" + req.path + query + (query.empty() ? "?" : "&") + key + "=" + std::to_string(value) +
         ">; rel=\"next\"";
}

namespace {

// Refuses a query parameter that is neither in `common` nor in `allowed`, naming those.
Status check_params(const httplib::Request& req, const std::vector<std::string>& common,
                    std::initializer_list<const char*> allowed) {
  for (const auto& kv : req.params) {
    const std::string& key = kv.first;
    if (std::find(common.begin(), common.end(), key) != common.end()) continue;
    if (std::any_of(allowed.begin(), allowed.end(), [&](const char* a) { return key == a; }))
      continue;
    std::string known;
    for (const auto& c : common) known += (known.empty() ? "" : ", ") + c;
    for (const char* a : allowed) known += std::string(", ") + a;
    return invalid_field_err(key, "unknown query parameter '" + key + "' for GET " + req.path +
                                      " (it takes: " + known + ")");
  }
  return {};
}

}  // namespace

Status check_list_params(const httplib::Request& req, std::initializer_list<const char*> allowed) {
  return check_params(req, {"limit", "offset", "pretty"}, allowed);
}

Status check_query_params(const httplib::Request& req, std::initializer_list<const char*> allowed) {
  return check_params(req, {"pretty"}, allowed);
}

Result<Page> parse_page(const httplib::Request& req) {
  Page page;
  page.limit = kDefaultPageLimit;
  if (req.has_param("limit")) {
    auto l = parse_u32("limit", req.get_param_value("limit"), 1,
                       static_cast<std::uint32_t>(kMaxPageLimit));
    if (!l) return invalid_field_err("limit", l.error());
    page.limit = *l;
  }
  if (req.has_param("offset")) {
    auto o = parse_u32("offset", req.get_param_value("offset"), 0, 0xFFFFFFFFu);
    if (!o) return invalid_field_err("offset", o.error());
    page.offset = *o;
  }
  return page;
}

void send_page(const httplib::Request& req, httplib::Response& res, const Page& page,
               const json& all) {
  const std::size_t total = all.size();
  const std::size_t first = std::min(page.offset, total);
  const std::size_t end = std::min(total, first + page.limit);
  json items = json::array();
  for (std::size_t i = first; i < end; ++i) items.push_back(all[i]);
  send_page_of(req, res, page, items, total);
}

void send_page_of(const httplib::Request& req, httplib::Response& res, const Page& page,
                  const json& items, std::size_t total) {
  const std::size_t end = std::min(total, std::min(page.offset, total) + items.size());
  res.set_header("X-Total-Count", std::to_string(total));
  if (end < total) res.set_header("Link", next_link(req, "offset", static_cast<long long>(end)));
  send_json(res, 200, items);
}

json filter_by(const json& all, const std::string& key, const std::string& value) {
  json out = json::array();
  for (const auto& item : all) {
    auto it = item.find(key);
    if (it == item.end()) continue;
    const bool match =
        it->is_array() ? std::find(it->begin(), it->end(), value) != it->end() : *it == value;
    if (match) out.push_back(item);
  }
  return out;
}

}  // namespace ota::service::http
