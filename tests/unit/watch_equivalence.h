// What the Kubernetes source makes of a watch body, through either decoder path — shared by the
// unit tests and tests/fuzz/watch_fuzz.cpp, which both require the two paths to agree.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kube_decode.h"
#include "kube_watch.h"

namespace sluice::testing {

// One event as the slice handler sees it: its type and RV, and the slice or the problem that
// decodeEndpointSlice reports (the fast path's `slice`, or the DOM path's object decoded).
struct SliceEventOutcome {
  kube::WatchEventType type = kube::WatchEventType::kAdded;
  std::string resourceVersion;
  bool initialEventsEnd = false;
  std::optional<int> errorCode;          // ERROR events
  std::optional<EndpointSlice> slice;    // ADDED/MODIFIED/DELETED, valid
  std::optional<Problem> problem;        // ADDED/MODIFIED/DELETED, invalid
  bool operator==(const SliceEventOutcome&) const = default;
};

struct StreamOutcome {
  std::vector<SliceEventOutcome> events;
  std::string status;  // of feed/finish; "" when the stream was fine
  size_t fastEvents = 0;  // events that took the fast path (not compared)
  bool operator==(const StreamOutcome& o) const { return events == o.events && status == o.status; }
};

// Feeds `body` in pieces of `chunk` bytes to a decoder making `objects`, as the reflector does.
inline StreamOutcome decodeSliceStream(std::string_view body, kube::WatchObjects objects,
                                       size_t chunk, size_t maxEventBytes = 64u << 20) {
  StreamOutcome out;
  kube::WatchStreamDecoder decoder(maxEventBytes, objects);
  std::vector<kube::WatchEvent> events;
  Status s;
  for (size_t pos = 0; pos < body.size() && s.isOk(); pos += chunk)
    s = decoder.feed(body.substr(pos, chunk), events);
  if (s.isOk()) s = decoder.finish(events);
  if (!s.isOk()) out.status = s.toString();
  for (auto& ev : events) {
    SliceEventOutcome o;
    o.type = ev.type;
    o.resourceVersion = ev.resourceVersion;
    o.initialEventsEnd = ev.initialEventsEnd;
    if (ev.error) o.errorCode = ev.error->code;
    if (ev.slice) {
      ++out.fastEvents;
      o.slice = std::move(ev.slice);
    } else if (ev.type != kube::WatchEventType::kBookmark && ev.type != kube::WatchEventType::kError) {
      auto d = kube::decodeEndpointSlice(ev.object);
      o.slice = std::move(d.value);
      o.problem = std::move(d.error);
    }
    out.events.push_back(std::move(o));
  }
  return out;
}

}  // namespace sluice::testing
