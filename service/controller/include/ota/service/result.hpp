// Small expected-like result type used across the service: no exceptions cross module
// boundaries. Errors carry a kind (mapped to HTTP status codes) and a message to which each
// level prepends its context ("image add: store: write /x: No space left on device").
#pragma once

#include <optional>
#include <string>
#include <utility>

namespace ota::service {

enum class ErrKind { internal, invalid, not_found, conflict };

struct Err {
  ErrKind kind = ErrKind::internal;
  std::string msg;
  // The request field or query parameter at fault ("limit", "target.group"), if one is;
  // the HTTP API names it in its error object.
  std::string field = {};
};

inline Err make_err(ErrKind kind, std::string msg) { return Err{kind, std::move(msg)}; }
inline Err internal_err(std::string msg) { return Err{ErrKind::internal, std::move(msg)}; }
inline Err invalid_err(std::string msg) { return Err{ErrKind::invalid, std::move(msg)}; }
inline Err not_found_err(std::string msg) { return Err{ErrKind::not_found, std::move(msg)}; }
inline Err conflict_err(std::string msg) { return Err{ErrKind::conflict, std::move(msg)}; }
// An invalid value of request field or query parameter `field`.
inline Err invalid_field_err(std::string field, std::string msg) {
  return Err{ErrKind::invalid, std::move(msg), std::move(field)};
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Err err) : err_(std::move(err)) {}      // NOLINT(google-explicit-constructor)

  bool ok() const { return value_.has_value(); }
  explicit operator bool() const { return ok(); }
  T& value() { return *value_; }
  const T& value() const { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }
  const Err& err() const { return err_; }
  const std::string& error() const { return err_.msg; }
  ErrKind kind() const { return err_.kind; }
  // Returns the error with "ctx: " prepended (for propagation).
  Err context(const std::string& ctx) const {
    return Err{err_.kind, ctx + ": " + err_.msg, err_.field};
  }

 private:
  std::optional<T> value_;
  Err err_;
};

struct Unit {};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Err err) : failed_(true), err_(std::move(err)) {}  // NOLINT
  template <typename T>
  Status(const Result<T>& r) : failed_(!r.ok()), err_(r.ok() ? Err{} : r.err()) {}  // NOLINT
  static Status Ok() { return Status(); }
  bool ok() const { return !failed_; }
  explicit operator bool() const { return ok(); }
  const Err& err() const { return err_; }
  const std::string& error() const { return err_.msg; }
  ErrKind kind() const { return err_.kind; }
  Err context(const std::string& ctx) const {
    return Err{err_.kind, ctx + ": " + err_.msg, err_.field};
  }

 private:
  bool failed_ = false;
  Err err_;
};

}  // namespace ota::service
