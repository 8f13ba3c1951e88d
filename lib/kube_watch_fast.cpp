// kube_watch_fast.cpp — the EndpointSlice watch line decoded in one SAX pass, without a DOM.
//
// Building nlohmann's DOM is half the cost of a watch event (every key, string and container of
// the object is allocated, then decodeEndpointSlice reads a tenth of it). Here nlohmann's SAX
// parser feeds a small state machine that knows the paths decodeEndpointSlice reads and writes
// them straight into the model value; every other subtree (managedFields, targetRef,
// ownerReferences...) is skipped with a depth counter.
//
// The DOM path stays the reference: this path only ever *declines*. Whatever it is not sure to
// decode exactly as decodeWatchEvent + decodeEndpointSlice would — invalid JSON, a BOOKMARK or
// ERROR, a duplicate key that the DOM resolves "last wins", a null or a wrong type where a value
// is read, any value the DOM decoder rejects — makes it return nullopt, and the caller decodes
// the line the DOM way. So problems (object, field path, reason) come from one place only, and
// the fast path needs no error wording of its own.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "kube_watch.h"

namespace sluice::kube {
namespace {

using json = nlohmann::json;

// What an open object or array is, on the paths decodeEndpointSlice reads.
enum class Ctx : uint8_t {
  kEvent,       // {type, object}
  kObject,      // the EndpointSlice
  kMetadata,
  kLabels,
  kPorts,       // ports[]
  kPort,
  kEndpoints,   // endpoints[]
  kEndpoint,
  kAddresses,   // endpoints[i].addresses[]
  kConditions,
  kHints,
  kHintList,    // hints.forZones[] / hints.forNodes[]
  kHint,
};

// The members read in each object context. The value is a bit in Frame::seen, so a second
// occurrence of a member (which the DOM would resolve "last wins") is noticed.
enum class Field : uint8_t {
  kUnknown,
  kType, kObject,                                  // event
  kMetadata, kAddressType, kEndpoints, kPorts,     // slice
  kName, kNamespace, kResourceVersion, kLabels,    // metadata (kName also: port, hint)
  kProtocol, kPort,                                // port
  kAddresses, kConditions, kNodeName, kZone, kHints,  // endpoint
  kReady, kServing, kTerminating,                  // conditions
  kForZones, kForNodes,                            // hints
};

constexpr std::string_view kServiceNameLabel = "kubernetes.io/service-name";

// The members read, by the context they belong to.
struct Member {
  Ctx ctx;
  std::string_view key;
  Field field;
};
constexpr Member kMembers[] = {
    {Ctx::kEvent, "type", Field::kType},
    {Ctx::kEvent, "object", Field::kObject},
    {Ctx::kObject, "metadata", Field::kMetadata},
    {Ctx::kObject, "addressType", Field::kAddressType},
    {Ctx::kObject, "endpoints", Field::kEndpoints},
    {Ctx::kObject, "ports", Field::kPorts},
    {Ctx::kMetadata, "name", Field::kName},
    {Ctx::kMetadata, "namespace", Field::kNamespace},
    {Ctx::kMetadata, "resourceVersion", Field::kResourceVersion},
    {Ctx::kMetadata, "labels", Field::kLabels},
    {Ctx::kPort, "name", Field::kName},
    {Ctx::kPort, "protocol", Field::kProtocol},
    {Ctx::kPort, "port", Field::kPort},
    {Ctx::kEndpoint, "addresses", Field::kAddresses},
    {Ctx::kEndpoint, "conditions", Field::kConditions},
    {Ctx::kEndpoint, "nodeName", Field::kNodeName},
    {Ctx::kEndpoint, "zone", Field::kZone},
    {Ctx::kEndpoint, "hints", Field::kHints},
    {Ctx::kConditions, "ready", Field::kReady},
    {Ctx::kConditions, "serving", Field::kServing},
    {Ctx::kConditions, "terminating", Field::kTerminating},
    {Ctx::kHints, "forZones", Field::kForZones},
    {Ctx::kHints, "forNodes", Field::kForNodes},
    {Ctx::kHint, "name", Field::kName},
};

Field fieldOf(Ctx ctx, std::string_view key) {
  for (const Member& m : kMembers)
    if (m.ctx == ctx && m.key == key) return m.field;
  return Field::kUnknown;
}

// A SAX handler (nlohmann's duck-typed interface, so calls are not virtual). Every callback
// returns false to decline, which stops the parse at once.
class SliceEventHandler {
 public:
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  // --- values ---
  bool null() {
    if (skip_ > 0) return true;
    if (depth_ == 0 || inArray()) return false;  // a null list element is an error in the DOM
    // A null member reads as absent, which result() then judges; a null label is an error.
    return top().ctx != Ctx::kLabels;
  }
  bool boolean(bool v) {
    if (skip_ > 0) return true;
    if (depth_ == 0) return false;
    switch (member()) {
      case Field::kReady: endpoint().ready = v; return true;
      case Field::kServing: endpoint().serving = v; return true;
      case Field::kTerminating: endpoint().terminating = v; return true;
      default: return unknownMember();
    }
  }
  bool number_integer(number_integer_t v) {
    if (skip_ > 0) return true;
    if (depth_ == 0) return false;
    if (member() == Field::kPort) return v >= 0 && port(static_cast<uint64_t>(v));
    return unknownMember();
  }
  bool number_unsigned(number_unsigned_t v) {
    if (skip_ > 0) return true;
    if (depth_ == 0) return false;
    if (member() == Field::kPort) return port(v);
    return unknownMember();
  }
  bool number_float(number_float_t, const string_t&) {
    if (skip_ > 0) return true;
    return depth_ > 0 && unknownMember();  // integers must be JSON integers
  }
  bool binary(binary_t&) { return false; }  // not produced by the JSON parser
  bool string(string_t& v) {
    if (skip_ > 0) return true;
    if (depth_ == 0) return false;
    const Ctx ctx = top().ctx;
    if (ctx == Ctx::kAddresses) return address(v);
    if (ctx == Ctx::kLabels) {
      if (serviceNameKey_) slice_.serviceName = v;  // a repeated label: the last wins, as in the DOM
      return true;
    }
    switch (member()) {
      case Field::kType: return eventType(v);
      case Field::kAddressType: addressType_ = v; return true;
      case Field::kName:
        if (ctx == Ctx::kMetadata) slice_.id.name = v;
        else if (ctx == Ctx::kPort) port_.name = v;
        else hintList().back() = v;
        return true;
      case Field::kNamespace: slice_.id.ns = v; return true;
      case Field::kResourceVersion: resourceVersion_ = v; return true;
      case Field::kProtocol: {
        auto p = parseProtocol(v);
        if (!p) return false;
        port_.protocol = *p;
        return true;
      }
      case Field::kNodeName: endpoint().nodeName = v; return true;
      case Field::kZone: endpoint().zone = v; return true;
      default: return unknownMember();
    }
  }

  // --- containers ---
  bool start_object(std::size_t) {
    if (skip_ > 0) return ++skip_, true;
    if (depth_ == 0) return push(Ctx::kEvent);
    switch (top().ctx) {
      case Ctx::kPorts:
        port_ = EndpointPort{};
        portNumber_ = 0;
        return push(Ctx::kPort);
      case Ctx::kEndpoints:
        slice_.endpoints.emplace_back();
        return push(Ctx::kEndpoint);
      case Ctx::kHintList:
        hintList().emplace_back();  // a hint without a name is an empty name, as in the DOM
        return push(Ctx::kHint);
      default:
        break;
    }
    switch (member()) {
      case Field::kObject: haveObject_ = true; return push(Ctx::kObject);
      case Field::kMetadata: return push(Ctx::kMetadata);
      case Field::kLabels: return push(Ctx::kLabels);
      case Field::kConditions: return push(Ctx::kConditions);
      case Field::kHints: return push(Ctx::kHints);
      default: return skipUnknown();
    }
  }
  bool end_object() {
    if (skip_ > 0) return --skip_, true;
    if (top().ctx == Ctx::kPort && portNumber_ != 0) {
      // A nil or zero port is "all ports": left out, as decodeEndpointPorts does.
      port_.port = static_cast<uint16_t>(portNumber_);
      slice_.ports.push_back(std::move(port_));
    }
    --depth_;
    return true;
  }
  bool start_array(std::size_t) {
    if (skip_ > 0) return ++skip_, true;
    if (depth_ == 0) return false;  // the event must be an object
    switch (member()) {
      case Field::kPorts: return push(Ctx::kPorts);
      case Field::kEndpoints: return push(Ctx::kEndpoints);
      case Field::kAddresses: return push(Ctx::kAddresses);
      case Field::kForZones: hintNodes_ = false; return push(Ctx::kHintList);
      case Field::kForNodes: hintNodes_ = true; return push(Ctx::kHintList);
      default: return skipUnknown();
    }
  }
  bool end_array() {
    if (skip_ > 0) return --skip_, true;
    --depth_;
    return true;
  }
  bool key(string_t& k) {
    if (skip_ > 0) return true;
    Frame& f = top();
    if (f.ctx == Ctx::kLabels) {
      serviceNameKey_ = k == kServiceNameLabel;
      return true;
    }
    f.field = fieldOf(f.ctx, k);
    if (f.field == Field::kUnknown) return true;
    const uint32_t bit = 1u << static_cast<unsigned>(f.field);
    if (f.seen & bit) return false;  // a repeated member: the DOM keeps the last one
    f.seen |= bit;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) {
    return false;
  }

  // The event, when everything decodeWatchEvent and decodeEndpointSlice check holds.
  std::optional<WatchEvent> result() {
    if (!haveType_ || !haveObject_) return std::nullopt;
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
  struct Frame {
    Ctx ctx = Ctx::kEvent;
    Field field = Field::kUnknown;  // the member whose value comes next (object contexts)
    uint32_t seen = 0;              // the members met so far (object contexts)
  };

  Frame& top() { return stack_[depth_ - 1]; }
  bool inArray() {
    const Ctx c = top().ctx;
    return c == Ctx::kPorts || c == Ctx::kEndpoints || c == Ctx::kAddresses || c == Ctx::kHintList;
  }
  // The member the next value belongs to; kUnknown for list elements and labels, which the
  // callbacks handle by context.
  Field member() { return inArray() ? Field::kUnknown : top().field; }
  // A value of a member nothing reads is ignored; anything else not handled is declined (a
  // wrong type where a value is read, a list element of the wrong kind, a label not a string).
  bool unknownMember() {
    return top().ctx != Ctx::kLabels && !inArray() && top().field == Field::kUnknown;
  }
  bool skipUnknown() {
    if (!unknownMember()) return false;
    skip_ = 1;
    return true;
  }
  bool push(Ctx ctx) {
    if (depth_ == stack_.size()) return false;  // cannot happen: no path read here is deeper
    stack_[depth_++] = Frame{ctx};
    return true;
  }
  Endpoint& endpoint() { return slice_.endpoints.back(); }
  std::vector<std::string>& hintList() {
    return hintNodes_ ? endpoint().hintNodes : endpoint().hintZones;
  }
  bool eventType(std::string_view t) {
    auto parsed = parseWatchEventType(t);
    // BOOKMARK, ERROR and unknown types are the DOM path's business.
    if (!parsed || *parsed == WatchEventType::kBookmark || *parsed == WatchEventType::kError) return false;
    type_ = *parsed;
    haveType_ = true;
    return true;
  }
  bool port(uint64_t v) {
    if (v > 65535) return false;
    portNumber_ = static_cast<uint32_t>(v);
    return true;
  }
  bool address(std::string_view text) {
    auto ip = IPAddress::parse(text);
    if (!ip) return false;
    endpoint().addresses.push_back(*ip);
    return true;
  }

  std::array<Frame, 8> stack_{};
  size_t depth_ = 0;
  int skip_ = 0;  // > 0: inside a subtree nothing reads, this many containers deep
  bool serviceNameKey_ = false;  // the current label is kubernetes.io/service-name
  bool hintNodes_ = false;       // the open hint list is forNodes (else forZones)

  WatchEventType type_ = WatchEventType::kAdded;
  bool haveType_ = false;
  bool haveObject_ = false;
  std::string addressType_;
  std::string resourceVersion_;
  EndpointPort port_;        // the port being read
  uint32_t portNumber_ = 0;  // its number; 0 = nil or zero
  EndpointSlice slice_;
};

}  // namespace

std::optional<WatchEvent> decodeSliceEventFast(std::string_view text) {
  SliceEventHandler handler;
  if (!json::sax_parse(text.begin(), text.end(), &handler)) return std::nullopt;
  return handler.result();
}

}  // namespace sluice::kube
