// sluice/status.h — the one error vocabulary of sluice.
//
// Every fallible library call returns a Status or a Result<T>. A Status carries a canonical
// code, the errno that caused it (if any), a human message (for kernel errors: the extended
// ACK text) and, for transactions, the index of the operation that failed.
#pragma once

#include <cerrno>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace sluice {

enum class Code {
  kOk,
  kNotFound,
  kAlreadyExists,
  kInvalidArgument,
  kPermissionDenied,
  kUnavailable,
  kAborted,
  kResourceExhausted,
  kFailedPrecondition,
  kUnimplemented,
  kInternal,
};

const char* codeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message, int err = 0, std::optional<size_t> opIndex = {})
      : code_(code), errno_(err), opIndex_(opIndex), message_(std::move(message)) {}

  static Status ok() { return {}; }
  // Maps an errno from a syscall or the kernel to a canonical code.
  static Status fromErrno(int err, std::string message, std::optional<size_t> opIndex = {});

  bool isOk() const { return code_ == Code::kOk; }
  explicit operator bool() const { return isOk(); }
  Code code() const { return code_; }
  int err() const { return errno_; }
  // Index of the failing operation of a transaction, when the failure maps to one.
  std::optional<size_t> opIndex() const { return opIndex_; }
  const std::string& message() const { return message_; }
  // "InvalidArgument: <message> (errno 22: Invalid argument) [op 3]"
  std::string toString() const;

  // Prepends context: "context: message".
  Status withContext(const std::string& context) const;

 private:
  Code code_ = Code::kOk;
  int errno_ = 0;
  std::optional<size_t> opIndex_;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}  // NOLINT: must not be ok

  bool isOk() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return isOk(); }
  const Status& status() const {
    static const Status kOk;
    return isOk() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace sluice
