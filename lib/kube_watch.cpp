// kube_watch.cpp — push parser for watch streams, LIST bodies and Status objects.
#include "kube_watch.h"

#include <fmt/format.h>

#include <cstring>

namespace sluice::kube {
namespace {

using json = nlohmann::json;

const json* field(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

std::string stringField(const json& obj, const char* key) {
  const json* v = field(obj, key);
  return v && v->is_string() ? v->get<std::string>() : std::string();
}

int intField(const json& obj, const char* key) {
  const json* v = field(obj, key);
  if (!v || !v->is_number_integer()) return 0;
  int64_t n = v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT32_MAX) ? INT32_MAX
                                                                                 : v->get<int64_t>();
  return n < INT32_MIN ? INT32_MIN : n > INT32_MAX ? INT32_MAX : static_cast<int>(n);
}

bool blank(std::string_view s) {
  for (char c : s)
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') return false;
  return true;
}

Status invalid(std::string message) { return Status(Code::kInvalidArgument, std::move(message)); }

}  // namespace

bool ApiStatus::resourceVersionTooLarge() const {
  for (const auto& c : causes)
    if (c == "ResourceVersionTooLarge") return true;
  return false;
}

std::string ApiStatus::toString() const {
  return fmt::format("{} {}: {}", code, reason.empty() ? "Unknown" : reason, message);
}

ApiStatus decodeApiStatus(const nlohmann::json& status) {
  ApiStatus s;
  s.code = intField(status, "code");
  s.reason = stringField(status, "reason");
  s.message = stringField(status, "message");
  if (const json* details = field(status, "details")) {
    s.retryAfterSeconds = intField(*details, "retryAfterSeconds");
    if (const json* causes = field(*details, "causes"); causes && causes->is_array())
      for (const auto& c : *causes) s.causes.push_back(stringField(c, "reason"));
  }
  return s;
}

const char* watchEventTypeName(WatchEventType t) {
  switch (t) {
    case WatchEventType::kAdded: return "ADDED";
    case WatchEventType::kModified: return "MODIFIED";
    case WatchEventType::kDeleted: return "DELETED";
    case WatchEventType::kBookmark: return "BOOKMARK";
    case WatchEventType::kError: return "ERROR";
  }
  return "?";
}

std::optional<WatchEventType> parseWatchEventType(std::string_view name) {
  for (auto t : {WatchEventType::kAdded, WatchEventType::kModified, WatchEventType::kDeleted, WatchEventType::kBookmark,
                 WatchEventType::kError})
    if (name == watchEventTypeName(t)) return t;
  return std::nullopt;
}

// metadata.managedFields (server-side apply bookkeeping) is often half of an object's bytes and
// no source reads it: it is dropped while parsing instead of being built and thrown away.
// Depth 3 = event → object → metadata.
bool dropManagedFields(int depth, json::parse_event_t event, json& parsed) {
  return !(event == json::parse_event_t::key && depth == 3 && parsed.is_string() &&
           parsed.get_ref<const std::string&>() == "managedFields");
}

Result<WatchEvent> decodeWatchEvent(std::string_view text) {
  // No exceptions: a garbled stream is an ordinary, reported failure.
  json doc = json::parse(text.begin(), text.end(), dropManagedFields, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return invalid("not valid JSON");
  if (!doc.is_object()) return invalid("not a JSON object");
  const json* type = field(doc, "type");
  if (!type || !type->is_string()) return invalid("no \"type\"");
  WatchEvent ev;
  const auto& t = type->get_ref<const std::string&>();
  auto parsed = parseWatchEventType(t);
  if (!parsed) return invalid(fmt::format("unknown event type \"{}\"", t));  // as client-go's decoder
  ev.type = *parsed;
  auto obj = doc.find("object");
  if (obj == doc.end() || !obj->is_object()) return invalid("no \"object\"");
  ev.object = std::move(*obj);
  if (ev.type == WatchEventType::kError) {
    ev.error = decodeApiStatus(ev.object);
    return ev;
  }
  const json* meta = field(ev.object, "metadata");
  ev.resourceVersion = meta ? stringField(*meta, "resourceVersion") : std::string();
  if (ev.type == WatchEventType::kBookmark && meta) {
    if (const json* ann = field(*meta, "annotations"))
      ev.initialEventsEnd = stringField(*ann, "k8s.io/initial-events-end") == "true";
  }
  return ev;
}

Status WatchStreamDecoder::decodeLine(std::string_view line, bool padded, std::vector<WatchEvent>& out) {
  if (blank(line)) return Status::ok();
  if (objects_ == WatchObjects::kEndpointSlices) {
    if (auto fast = padded ? fast_.decodePadded(line) : fast_.decode(line)) {
      ++events_;
      out.push_back(std::move(*fast));
      return Status::ok();
    }
  }
  auto ev = decodeWatchEvent(line);
  if (!ev) {
    failed_ = ev.status().withContext(fmt::format("watch event {}", events_));
    return failed_;
  }
  ++events_;
  out.push_back(std::move(ev).value());
  return Status::ok();
}

Status WatchStreamDecoder::feed(std::string_view bytes, std::vector<WatchEvent>& out) {
  if (!failed_.isOk()) return failed_;
  while (!bytes.empty()) {
    const void* nl = std::memchr(bytes.data(), '\n', bytes.size());
    if (!nl) {
      if (pending_.size() + bytes.size() > maxEventBytes_) {
        failed_ = Status(Code::kResourceExhausted,
                         fmt::format("watch event {} is longer than {} bytes", events_, maxEventBytes_));
        return failed_;
      }
      pending_.append(bytes);
      return Status::ok();
    }
    size_t len = static_cast<const char*>(nl) - bytes.data();
    Status s;
    if (pending_.empty()) {
      // Whole line in this chunk: no copy. The fast path reads past the line's end, in place
      // when the chunk goes on long enough (the '\n' and the next events), else from a copy.
      s = decodeLine(bytes.substr(0, len), bytes.size() - len >= kFastPathPadding, out);
    } else {
      pending_.append(bytes.substr(0, len));
      const size_t lineBytes = pending_.size();
      // The padding the fast path reads past the line, in the buffer that holds it anyway.
      if (objects_ == WatchObjects::kEndpointSlices) pending_.resize(lineBytes + kFastPathPadding);
      s = decodeLine(std::string_view(pending_).substr(0, lineBytes), true, out);
      pending_.clear();
    }
    if (!s.isOk()) return s;
    bytes.remove_prefix(len + 1);
  }
  return Status::ok();
}

Status WatchStreamDecoder::finish(std::vector<WatchEvent>& out) {
  if (!failed_.isOk()) return failed_;
  std::string rest = std::move(pending_);
  pending_.clear();
  if (blank(rest)) return Status::ok();
  auto s = decodeLine(rest, /*padded=*/false, out);
  if (!s.isOk()) return s.withContext("stream ended inside an event");
  return s;
}

Result<ListResponse> decodeList(std::string_view body) {
  json doc = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return invalid("list response: not valid JSON");
  if (!doc.is_object()) return invalid("list response: not a JSON object");
  if (stringField(doc, "kind") == "Status")
    return Status(Code::kUnavailable, "list response is a Status: " + decodeApiStatus(doc).toString());
  ListResponse list;
  if (const json* meta = field(doc, "metadata")) {
    list.resourceVersion = stringField(*meta, "resourceVersion");
    list.continueToken = stringField(*meta, "continue");
  }
  if (list.resourceVersion.empty()) return invalid("list response: no metadata.resourceVersion");
  if (auto items = doc.find("items"); items != doc.end() && !items->is_null()) {
    if (!items->is_array()) return invalid("list response: \"items\" is not a list");
    list.items.reserve(items->size());
    for (auto& item : *items) list.items.push_back(std::move(item));
  }
  return list;
}

}  // namespace sluice::kube
