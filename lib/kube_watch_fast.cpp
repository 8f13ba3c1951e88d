// kube_watch_fast.cpp — the EndpointSlice watch line decoded by simdjson, without nlohmann.
//
// nlohmann's lexer alone costs as much as a whole watch event may (P7: ≥ 100 000 events/s on
// one core): it copies every character of every token, managedFields included. simdjson
// validates and indexes the line with SIMD instructions (stage 1) and writes a flat tape
// (stage 2) in which every object and array records where it ends, so the members nothing
// reads (managedFields, targetRef, ownerReferences, annotations...) are stepped over in one jump.
// The reader below visits only the paths decodeEndpointSlice reads and writes them straight into
// the model value.
//
// Why simdjson's DOM API and not its On-Demand API: On-Demand validates only what it visits —
// skipping a member just counts brackets, so `"managedFields":[tru, 1.}` would pass — while the
// DOM path rejects such a line and fails the stream. Keeping "invalid JSON declines" would need a
// second, validating pass. The DOM parser validates the whole line (UTF-8, strings with their
// escapes and surrogates, numbers, literals, structure) and, measured on the captured TKE line
// (bench/results/decode.md), parse + read costs 1.2 µs against 1.8–2.0 µs for On-Demand's
// unvalidated read. Its parser is also dispatched at run time to the CPU's best kernel (AVX2
// here), where On-Demand is compiled for the build's -march (the generic kernel without one).
//
// The nlohmann DOM path stays the reference: this path only ever *declines*. Whatever it is not
// sure to decode exactly as decodeWatchEvent + decodeEndpointSlice would — invalid JSON (simdjson
// also refuses some lines nlohmann takes: integers beyond 64 bits, a byte-order mark), a BOOKMARK
// or ERROR, a duplicate key that the DOM resolves "last wins", a null or a wrong type where a
// value is read, any value the DOM decoder rejects — makes it return nullopt, and the caller
// decodes the line the DOM way. So problems (object, field path, reason) come from one place
// only, and the fast path needs no error wording of its own.
#include <simdjson.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "kube_watch.h"

namespace sluice::kube {

static_assert(kFastPathPadding >= simdjson::SIMDJSON_PADDING, "simdjson reads up to SIMDJSON_PADDING bytes past its input");

namespace {

namespace dom = simdjson::dom;

// simdjson's parser keeps buffers sized for the largest line it has parsed (about 14 bytes per
// input byte: structural index, tape, strings). Longer lines (an EndpointSlice holds at most
// 1 000 endpoints, ≈ 300 KB with managedFields) go to the DOM path, so a decoder never holds more
// than ≈ 15 MB for them.
constexpr size_t kMaxFastLine = 1u << 20;

constexpr std::string_view kServiceNameLabel = "kubernetes.io/service-name";

// Calls read(i, value) for each member of `obj` whose key is keys[i], in document order. Members
// with other keys are stepped over (their subtree is never visited); a null value reads as absent
// (Go's encoding/json), so it is not passed on. A key met twice declines: the DOM keeps the last.
template <typename Read>
bool members(dom::object obj, std::initializer_list<std::string_view> keys, Read&& read) {
  uint32_t seen = 0;
  for (dom::key_value_pair member : obj) {
    size_t i = 0;
    for (std::string_view k : keys) {
      if (k == member.key) break;
      ++i;
    }
    if (i == keys.size()) continue;
    if (seen & (1u << i)) return false;
    seen |= 1u << i;
    if (member.value.is_null()) continue;
    if (!read(i, member.value)) return false;
  }
  return true;
}

// Calls read(element) for each element of an array member; null elements decline (the DOM
// decoder rejects them).
template <typename Read>
bool elements(dom::element value, Read&& read) {
  dom::array array;
  if (value.get(array)) return false;
  for (dom::element e : array)
    if (e.is_null() || !read(e)) return false;
  return true;
}

bool string(dom::element value, std::string& out) {
  std::string_view s;
  if (value.get(s)) return false;
  out.assign(s);
  return true;
}

bool boolean(dom::element value, bool& out) { return !value.get(out); }

bool object(dom::element value, dom::object& out) { return !value.get(out); }

// Reads one watch event; every function returns false to decline.
class SliceEventReader {
 public:
  bool event(dom::element root) {
    dom::object ev;
    if (!object(root, ev)) return false;
    bool haveType = false, haveObject = false;
    return members(ev, {"type", "object"},
                   [&](size_t key, dom::element v) {
                     if (key == 0) return haveType = eventType(v);
                     return haveObject = slice(v);
                   }) &&
           haveType && haveObject;
  }

  // The event, when everything decodeWatchEvent and decodeEndpointSlice check holds.
  std::optional<WatchEvent> result() {
    if (slice_.id.name.empty() || slice_.serviceName.empty()) return std::nullopt;
    if (addressType_ == "IPv4") slice_.addressType = IPFamily::kV4;
    else if (addressType_ == "IPv6") slice_.addressType = IPFamily::kV6;
    else return std::nullopt;  // also FQDN: the DOM decoder names the problem
    for (const auto& e : slice_.endpoints)
      for (const auto& a : e.addresses)
        if (a.family() != slice_.addressType) return std::nullopt;
    if (slice_.id.ns.empty()) slice_.id.ns = "default";
    WatchEvent ev;
    ev.type = type_;
    ev.resourceVersion = std::move(resourceVersion_);
    ev.slice = std::move(slice_);
    return ev;
  }

 private:
  bool eventType(dom::element v) {
    std::string_view t;
    if (v.get(t)) return false;
    auto parsed = parseWatchEventType(t);
    // BOOKMARK, ERROR and unknown types are the DOM path's business.
    if (!parsed || *parsed == WatchEventType::kBookmark || *parsed == WatchEventType::kError) return false;
    type_ = *parsed;
    return true;
  }

  bool slice(dom::element v) {
    dom::object obj;
    if (!object(v, obj)) return false;
    return members(obj, {"metadata", "addressType", "endpoints", "ports"}, [&](size_t key, dom::element m) {
      switch (key) {
        case 0: return metadata(m);
        case 1: return string(m, addressType_);
        case 2: return elements(m, [&](dom::element e) { return endpoint(e); });
        default: return elements(m, [&](dom::element p) { return port(p); });
      }
    });
  }

  bool metadata(dom::element v) {
    dom::object meta;
    if (!object(v, meta)) return false;
    return members(meta, {"name", "namespace", "resourceVersion", "labels"}, [&](size_t key, dom::element m) {
      switch (key) {
        case 0: return string(m, slice_.id.name);
        case 1: return string(m, slice_.id.ns);
        case 2: return string(m, resourceVersion_);
        default: return labels(m);
      }
    });
  }

  // Every label must be a string (a null one too is an error in the DOM decoder); a repeated
  // service-name label: the last wins, as in the DOM.
  bool labels(dom::element v) {
    dom::object labels;
    if (!object(v, labels)) return false;
    for (dom::key_value_pair label : labels) {
      std::string_view value;
      if (label.value.get(value)) return false;
      if (label.key == kServiceNameLabel) slice_.serviceName.assign(value);
    }
    return true;
  }

  // A nil or zero port is "all ports": left out, as decodeEndpointPorts does.
  bool port(dom::element v) {
    dom::object obj;
    if (!object(v, obj)) return false;
    EndpointPort port;
    int64_t number = 0;
    bool ok = members(obj, {"name", "protocol", "port"}, [&](size_t key, dom::element m) {
      switch (key) {
        case 0: return string(m, port.name);
        case 1: {
          std::string_view text;
          if (m.get(text)) return false;
          auto p = parseProtocol(text);
          if (!p) return false;
          port.protocol = *p;
          return true;
        }
        default:
          // Only JSON integers (a double such as 80.0 is refused, as in the DOM decoder);
          // simdjson refuses integers beyond 64 bits outright.
          return !m.get(number) && number >= 0 && number <= 65535;
      }
    });
    if (!ok) return false;
    if (number != 0) {
      port.port = static_cast<uint16_t>(number);
      slice_.ports.push_back(std::move(port));
    }
    return true;
  }

  bool endpoint(dom::element v) {
    dom::object obj;
    if (!object(v, obj)) return false;
    Endpoint& ep = slice_.endpoints.emplace_back();
    return members(obj, {"addresses", "conditions", "nodeName", "zone", "hints"}, [&](size_t key, dom::element m) {
      switch (key) {
        case 0: return elements(m, [&](dom::element a) { return address(a, ep); });
        case 1: return conditions(m, ep);
        case 2: return string(m, ep.nodeName);
        case 3: return string(m, ep.zone);
        default: return hints(m, ep);
      }
    });
  }

  bool address(dom::element v, Endpoint& ep) {
    std::string_view text;
    if (v.get(text)) return false;
    auto ip = IPAddress::parse(text);
    if (!ip) return false;
    ep.addresses.push_back(*ip);
    return true;
  }

  bool conditions(dom::element v, Endpoint& ep) {
    dom::object obj;
    if (!object(v, obj)) return false;
    return members(obj, {"ready", "serving", "terminating"}, [&](size_t key, dom::element m) {
      return boolean(m, key == 0 ? ep.ready : key == 1 ? ep.serving : ep.terminating);
    });
  }

  bool hints(dom::element v, Endpoint& ep) {
    dom::object obj;
    if (!object(v, obj)) return false;
    std::vector<std::string> lists[2] = {ep.hints.zones(), ep.hints.nodes()};
    bool ok = members(obj, {"forZones", "forNodes"}, [&](size_t key, dom::element m) {
      return elements(m, [&](dom::element h) {
        dom::object hint;
        if (!object(h, hint)) return false;
        std::string& name = lists[key].emplace_back();  // a hint without a name is an empty name, as in the DOM
        return members(hint, {"name"}, [&](size_t, dom::element n) { return string(n, name); });
      });
    });
    ep.hints = EndpointHints(std::move(lists[0]), std::move(lists[1]));
    return ok;
  }

  WatchEventType type_ = WatchEventType::kAdded;
  std::string addressType_;
  std::string resourceVersion_;
  EndpointSlice slice_;
};

}  // namespace

struct SliceEventDecoder::Parser {
  dom::parser parser{kMaxFastLine};
};

SliceEventDecoder::SliceEventDecoder() = default;
SliceEventDecoder::~SliceEventDecoder() = default;
SliceEventDecoder::SliceEventDecoder(SliceEventDecoder&&) noexcept = default;
SliceEventDecoder& SliceEventDecoder::operator=(SliceEventDecoder&&) noexcept = default;

std::optional<WatchEvent> SliceEventDecoder::parse(std::string_view text, bool padded) {
  if (text.size() > kMaxFastLine) return std::nullopt;
  if (!parser_) parser_ = std::make_unique<Parser>();  // only decoders that see a line pay for it
  // Unpadded text is copied by simdjson into a padded buffer it keeps for the next line.
  dom::element root;
  if (parser_->parser.parse(text.data(), text.size(), /*realloc_if_needed=*/!padded).get(root))
    return std::nullopt;
  SliceEventReader reader;
  if (!reader.event(root)) return std::nullopt;
  return reader.result();
}

std::optional<WatchEvent> decodeSliceEventFast(std::string_view text) {
  return SliceEventDecoder().decode(text);
}

}  // namespace sluice::kube
