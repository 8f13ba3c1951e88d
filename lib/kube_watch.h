// kube_watch.h (private) — the wire formats of the Kubernetes LIST and WATCH responses.
//
// A watch response body is a sequence of compact JSON `metav1.WatchEvent`s, one per line
// (the apiserver writes each with Go's json.Encoder, which ends it with '\n', and flushes). HTTP
// chunk boundaries are not event boundaries, so WatchStreamDecoder is a push parser: feed it
// whatever bytes arrived, it returns the events those bytes completed. ERROR events carry a
// metav1.Status, decoded into ApiStatus so the reflector can tell "410 Expired/Gone: relist"
// from other failures. Nothing here does I/O; the HTTP reflector (kube source) drives it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "sluice/model.h"
#include "sluice/status.h"

namespace sluice::kube {

// A metav1.Status (error body of any API call, and the object of a watch ERROR event).
struct ApiStatus {
  int code = 0;            // HTTP-like code: 410, 404, 504...
  std::string reason;      // "Expired", "Gone", "NotFound", "Timeout"...
  std::string message;
  int retryAfterSeconds = 0;           // details.retryAfterSeconds, 0 = none
  std::vector<std::string> causes;     // details.causes[].reason, e.g. "ResourceVersionTooLarge"

  // The resourceVersion is older than the server's history: relist. Servers ≥ 1.18 say
  // reason "Expired", older ones "Gone"; both with code 410, whatever the message's wording.
  bool expired() const { return code == 410 || reason == "Expired" || reason == "Gone"; }
  // The resourceVersion is newer than the server has seen (504 + ResourceVersionTooLarge).
  bool resourceVersionTooLarge() const;
  std::string toString() const;  // "410 Expired: too old resource version: 1 (2)"
};

// Reads a Status object; fields that are absent or of the wrong type stay zero/empty.
ApiStatus decodeApiStatus(const nlohmann::json& status);

enum class WatchEventType : uint8_t { kAdded, kModified, kDeleted, kBookmark, kError };
const char* watchEventTypeName(WatchEventType t);  // "ADDED"...
// The inverse: nullopt for a type client-go would not know either.
std::optional<WatchEventType> parseWatchEventType(std::string_view name);

struct WatchEvent {
  WatchEventType type = WatchEventType::kAdded;
  nlohmann::json object;              // the full object (DELETED: its last state); null if `slice`
  // The object already decoded, when a decoder made for EndpointSlices took its fast path
  // (WatchObjects::kEndpointSlices): exactly what decodeEndpointSlice(object) would return.
  std::optional<EndpointSlice> slice;
  std::string resourceVersion;        // object.metadata.resourceVersion; "" for ERROR
  std::optional<ApiStatus> error;     // set for ERROR events
  // BOOKMARK carrying annotation k8s.io/initial-events-end=true (end of a streaming list).
  bool initialEventsEnd = false;
};

// simdjson reads up to this many bytes past the end of its input (SIMDJSON_PADDING, checked in
// lib/kube_watch_fast.cpp); their values do not matter, only that they are readable.
inline constexpr size_t kFastPathPadding = 64;

// The fast path of WatchObjects::kEndpointSlices (lib/kube_watch_fast.cpp): simdjson parses the
// line and a reader takes only what decodeEndpointSlice reads, straight into an event with
// `slice` set. It declines (nullopt) every line it is not certain to decode exactly as
// decodeWatchEvent + decodeEndpointSlice do — invalid JSON, a BOOKMARK or ERROR, a repeated
// member, a null or wrongly typed value where one is read, any value the DOM decoder rejects —
// so the caller takes the DOM path for it, and problems are always worded by that one decoder.
// One per stream: it keeps simdjson's parser (and its buffers) from line to line.
class SliceEventDecoder {
 public:
  SliceEventDecoder();
  ~SliceEventDecoder();
  SliceEventDecoder(SliceEventDecoder&&) noexcept;
  SliceEventDecoder& operator=(SliceEventDecoder&&) noexcept;

  // `text` must be followed in memory by kFastPathPadding readable bytes (e.g. the rest of the
  // read buffer it came from): it is parsed in place.
  std::optional<WatchEvent> decodePadded(std::string_view text) { return parse(text, true); }
  // Any text: copied first into a padded buffer the parser keeps for the next line.
  std::optional<WatchEvent> decode(std::string_view text) { return parse(text, false); }

 private:
  std::optional<WatchEvent> parse(std::string_view text, bool padded);

  struct Parser;  // simdjson's parser: simdjson.h (31 000 lines) stays out of this header
  std::unique_ptr<Parser> parser_;  // made on the first line
};

// One line through a fresh SliceEventDecoder (tests; a stream keeps one decoder).
std::optional<WatchEvent> decodeSliceEventFast(std::string_view text);

// What a WatchStreamDecoder makes of an event's object.
enum class WatchObjects : uint8_t {
  kJson,            // every event carries its object as JSON
  kEndpointSlices,  // valid EndpointSlice ADDED/MODIFIED/DELETED events carry `slice` instead
};

class WatchStreamDecoder {
 public:
  // An event longer than `maxEventBytes` (no newline within it) fails the stream instead of
  // growing the buffer without bound.
  explicit WatchStreamDecoder(size_t maxEventBytes = 64u << 20,
                              WatchObjects objects = WatchObjects::kJson)
      : maxEventBytes_(maxEventBytes), objects_(objects) {}

  // Consumes `bytes`, appending every event they complete to `out`. A malformed event (not
  // JSON, not a WatchEvent, unknown type) returns InvalidArgument naming the event's index;
  // events before it are still in `out`, and the decoder stays failed: a watch with a garbled
  // stream must be restarted, as client-go does.
  Status feed(std::string_view bytes, std::vector<WatchEvent>& out);
  // The body ended. A trailing event without its newline is still decoded; an incomplete one
  // is an error (the connection dropped mid-event).
  Status finish(std::vector<WatchEvent>& out);

  size_t eventsDecoded() const { return events_; }

 private:
  // `padded`: kFastPathPadding readable bytes follow `line` (the fast path parses it in place).
  Status decodeLine(std::string_view line, bool padded, std::vector<WatchEvent>& out);

  size_t maxEventBytes_;
  WatchObjects objects_;
  SliceEventDecoder fast_;  // WatchObjects::kEndpointSlices
  std::string pending_;  // bytes of the event not yet terminated by '\n'
  size_t events_ = 0;
  Status failed_;
};

// Decodes one event document (the part of a watch line between newlines).
Result<WatchEvent> decodeWatchEvent(std::string_view text);

// A LIST response: `{"kind":"...List","metadata":{"resourceVersion","continue"},"items":[...]}`.
struct ListResponse {
  std::vector<nlohmann::json> items;
  std::string resourceVersion;  // the list's RV: where the following watch starts
  std::string continueToken;    // non-empty: fetch the next page with ?continue=
};
// A body that is a Status (kind "Status") is returned as an error with its message; use
// decodeApiStatus on the body for the details.
Result<ListResponse> decodeList(std::string_view body);

}  // namespace sluice::kube
