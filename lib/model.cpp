#include "sluice/model.h"
#include "sluice/source.h"

#include <fmt/format.h>

namespace sluice {

std::string Problem::toString() const {
  std::string s = object;
  if (!field.empty()) s += " " + field;
  return s + ": " + reason;
}

const char* resourceKindName(ResourceKind kind) {
  return kind == ResourceKind::kService ? "Service" : "EndpointSlice";
}

const char* protocolName(Protocol p) {
  switch (p) {
    case Protocol::kTCP: return "TCP";
    case Protocol::kUDP: return "UDP";
    case Protocol::kSCTP: return "SCTP";
  }
  return "?";
}

const char* protocolNftName(Protocol p) {
  switch (p) {
    case Protocol::kTCP: return "tcp";
    case Protocol::kUDP: return "udp";
    case Protocol::kSCTP: return "sctp";
  }
  return "?";
}

Result<Protocol> parseProtocol(std::string_view s) {
  if (s == "TCP" || s.empty()) return Protocol::kTCP;  // Kubernetes defaults to TCP
  if (s == "UDP") return Protocol::kUDP;
  if (s == "SCTP") return Protocol::kSCTP;
  return Status(Code::kInvalidArgument, fmt::format("unsupported protocol \"{}\"", s));
}

EndpointHints::EndpointHints(std::vector<std::string> zones, std::vector<std::string> nodes) {
  if (!zones.empty() || !nodes.empty()) lists_ = std::make_unique<Lists>(Lists{std::move(zones), std::move(nodes)});
}

EndpointHints::EndpointHints(const EndpointHints& other)
    : lists_(other.lists_ ? std::make_unique<Lists>(*other.lists_) : nullptr) {}

EndpointHints& EndpointHints::operator=(const EndpointHints& other) {
  if (this != &other) lists_ = other.lists_ ? std::make_unique<Lists>(*other.lists_) : nullptr;
  return *this;
}

namespace {
const std::vector<std::string> kNoNames;
}  // namespace

const std::vector<std::string>& EndpointHints::zones() const { return lists_ ? lists_->zones : kNoNames; }
const std::vector<std::string>& EndpointHints::nodes() const { return lists_ ? lists_->nodes : kNoNames; }

bool EndpointHints::operator==(const EndpointHints& other) const {
  return zones() == other.zones() && nodes() == other.nodes();
}

void Snapshot::upsertService(Service svc) {
  dirty_.insert(svc.id);
  auto id = svc.id;
  services_[id] = std::move(svc);
}

void Snapshot::removeService(const ObjectName& id) {
  if (services_.erase(id) > 0) dirty_.insert(id);
}

void Snapshot::upsertSlice(EndpointSlice slice) {
  ObjectName svc{slice.id.ns, slice.serviceName};
  auto [owner, fresh] = sliceOwner_.try_emplace(slice.id, nullptr);
  // The slice moved to another Service (label edited): both Services change.
  if (!fresh && !(*owner->second == svc)) unfile(slice.id, *owner->second);
  dirty_.insert(svc);
  auto& filed = *slices_.try_emplace(svc).first;
  owner->second = &filed.first;
  auto id = slice.id;
  filed.second[id] = std::move(slice);
}

void Snapshot::removeSlice(const ObjectName& sliceId) {
  auto owner = sliceOwner_.find(sliceId);
  if (owner == sliceOwner_.end()) return;
  unfile(sliceId, *owner->second);
  sliceOwner_.erase(owner);
}

// Takes the slice out of its Service's map and drops the map when it was the last one, which
// ends the life of the key `service` refers to.
void Snapshot::unfile(const ObjectName& sliceId, const ObjectName& service) {
  dirty_.insert(service);
  auto it = slices_.find(service);
  if (it == slices_.end()) return;
  it->second.erase(sliceId);
  if (it->second.empty()) slices_.erase(it);
}

void Snapshot::clear() {
  for (auto& [id, _] : services_) dirty_.insert(id);
  for (auto& [id, _] : slices_) dirty_.insert(id);
  services_.clear();
  slices_.clear();
  sliceOwner_.clear();
}

const Service* Snapshot::service(const ObjectName& id) const {
  auto it = services_.find(id);
  return it == services_.end() ? nullptr : &it->second;
}

const std::map<ObjectName, EndpointSlice>& Snapshot::slicesFor(const ObjectName& service) const {
  static const std::map<ObjectName, EndpointSlice> kNone;
  auto it = slices_.find(service);
  return it == slices_.end() ? kNone : it->second;
}

const ObjectName* Snapshot::sliceService(const ObjectName& sliceId) const {
  auto it = sliceOwner_.find(sliceId);
  return it == sliceOwner_.end() ? nullptr : it->second;
}

std::set<ObjectName> Snapshot::takeDirty() { return std::exchange(dirty_, {}); }

size_t Snapshot::sliceCount() const { return sliceOwner_.size(); }

}  // namespace sluice
