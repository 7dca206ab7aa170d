// Store internals shared by its source files (store.cpp, store_schema.cpp,
// store_records.cpp): cached statements with bind/reset, and the write-step macros.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <string>

namespace ota::service::detail {

// Binds and resets a cached statement.
class Q {
 public:
  explicit Q(sqlite3_stmt* s) : s_(s) {}
  ~Q() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  Q(const Q&) = delete;
  Q& operator=(const Q&) = delete;
  Q& bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Q& bind(int i, const char* v) { return bind(i, std::string(v)); }
  Q& bind(int i, long long v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Q& bind_u64(int i, std::uint64_t v) { return bind(i, static_cast<long long>(v)); }
  Q& bind_null(int i) {
    sqlite3_bind_null(s_, i);
    return *this;
  }
  int step() { return sqlite3_step(s_); }
  std::string text(int c) const {
    const unsigned char* t = sqlite3_column_text(s_, c);
    return t ? std::string(reinterpret_cast<const char*>(t),
                           static_cast<std::size_t>(sqlite3_column_bytes(s_, c)))
             : std::string();
  }
  bool is_null(int c) const { return sqlite3_column_type(s_, c) == SQLITE_NULL; }
  long long i64(int c) const { return sqlite3_column_int64(s_, c); }
  std::uint64_t u64(int c) const { return static_cast<std::uint64_t>(sqlite3_column_int64(s_, c)); }
  std::uint32_t u32(int c) const { return static_cast<std::uint32_t>(sqlite3_column_int64(s_, c)); }

 private:
  sqlite3_stmt* s_;
};

}  // namespace ota::service::detail

// Prepares (cached) `sql` into a Q named var; returns the error from the enclosing function.
#define OTA_PREP(var, sql)                      \
  auto var##_r = prepare(sql);                  \
  if (!var##_r) return var##_r.err();           \
  ::ota::service::detail::Q var(*var##_r)

// Steps a write statement to its end; failures and successes go through the health
// bookkeeping (record_write_failure / record_statement_done).
#define OTA_DONE(q, what)                                                              \
  do {                                                                                 \
    const int done_rc = (q).step();                                                    \
    if (done_rc != SQLITE_DONE)                                                        \
      return record_write_failure(done_rc, std::string(what) + ": " + errmsg());       \
    record_statement_done();                                                           \
  } while (0)
