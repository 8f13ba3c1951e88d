#include "sluice/status.h"

#include <cstring>

#include <fmt/format.h>

namespace sluice {

const char* codeName(Code code) {
  switch (code) {
    case Code::kOk: return "OK";
    case Code::kNotFound: return "NotFound";
    case Code::kAlreadyExists: return "AlreadyExists";
    case Code::kInvalidArgument: return "InvalidArgument";
    case Code::kPermissionDenied: return "PermissionDenied";
    case Code::kUnavailable: return "Unavailable";
    case Code::kAborted: return "Aborted";
    case Code::kResourceExhausted: return "ResourceExhausted";
    case Code::kFailedPrecondition: return "FailedPrecondition";
    case Code::kUnimplemented: return "Unimplemented";
    case Code::kInternal: return "Internal";
  }
  return "Unknown";
}

Status Status::fromErrno(int err, std::string message, std::optional<size_t> opIndex) {
  Code code = Code::kInternal;
  switch (err) {
    case 0: return {};
    case ENOENT: case ESRCH: code = Code::kNotFound; break;
    case EEXIST: code = Code::kAlreadyExists; break;
    case EINVAL: case ERANGE: case EOPNOTSUPP: case ENAMETOOLONG: case EMSGSIZE:
      code = Code::kInvalidArgument; break;
    case EPERM: case EACCES: code = Code::kPermissionDenied; break;
    case EAGAIN: case ECONNREFUSED: case EHOSTUNREACH: case ENETUNREACH: case ETIMEDOUT:
      code = Code::kUnavailable; break;
    case EBUSY: case EINTR: case ERESTART: code = Code::kAborted; break;
    case ENOMEM: case ENOBUFS: case ENOSPC: case E2BIG: case EMFILE: case ENFILE:
      code = Code::kResourceExhausted; break;
    default: break;
  }
  return Status(code, std::move(message), err, opIndex);
}

std::string Status::toString() const {
  if (isOk()) return "OK";
  std::string s = fmt::format("{}: {}", codeName(code_), message_);
  if (errno_ != 0) s += fmt::format(" (errno {}: {})", errno_, std::strerror(errno_));
  if (opIndex_) s += fmt::format(" [op {}]", *opIndex_);
  return s;
}

Status Status::withContext(const std::string& context) const {
  if (isOk()) return *this;
  Status s = *this;
  s.message_ = message_.empty() ? context : context + ": " + message_;
  return s;
}

}  // namespace sluice
