// KubeLeaseStore: leases as coordination.k8s.io/v1 Lease objects (optimistic concurrency on
// resourceVersion). docs/design.md §10 has the layout.
#include "sluice/lease_kube.h"

#include <algorithm>
#include <cctype>
#include <ctime>
#include <map>
#include <mutex>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "../lib/kube_reflector.h"
#include "../lib/kube_rest.h"

namespace sluice {
namespace {

using json = nlohmann::json;

// metav1.MicroTime: RFC 3339 in UTC with exactly six decimals.
std::string microTime(Clock::WallTime t) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(us / 1000000 - (us % 1000000 < 0 ? 1 : 0));
  const long frac = static_cast<long>(((us % 1000000) + 1000000) % 1000000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:06}Z", buf, frac);
}

// Reads a MicroTime (or a plain RFC 3339 time) back; the epoch when it does not parse — the
// value is a label for humans, nothing depends on it.
Clock::WallTime parseMicroTime(const std::string& s) {
  std::tm tm{};
  int frac = 0;
  char fracBuf[10] = {0};
  if (std::sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d.%9[0-9]", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec, fracBuf) < 6)
    return {};
  std::string digits = std::string(fracBuf) + "000000";
  frac = std::stoi(digits.substr(0, 6));
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return Clock::WallTime(std::chrono::seconds(timegm(&tm)) + std::chrono::microseconds(frac));
}

uint64_t fnv64(const std::string& s) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// The holder's lease id: changes whenever the object is re-created (new uid) or taken over
// (leaseTransitions bumped), so a superseded handle stops working.
int64_t leaseIdOf(const json& obj) {
  const std::string uid = obj.value("/metadata/uid"_json_pointer, std::string());
  const int64_t transitions = obj.value("/spec/leaseTransitions"_json_pointer, int64_t{0});
  return static_cast<int64_t>(fnv64(uid + "/" + std::to_string(transitions)) & 0x7fffffffffffffffull) | 1;
}

// The record's generation: the object's resourceVersion (an integer on every real apiserver;
// hashed if some server hands out something else). Any write changes it.
uint64_t generationOf(const json& obj) {
  const std::string rv = obj.value("/metadata/resourceVersion"_json_pointer, std::string());
  if (!rv.empty() && rv.size() < 20 && std::all_of(rv.begin(), rv.end(), ::isdigit)) return std::stoull(rv);
  return fnv64(rv);
}

std::string encodePorts(const std::vector<EndpointPort>& ports) {
  std::string out;
  for (const EndpointPort& p : ports)
    out += (out.empty() ? "" : ",") + p.name + "/" + protocolName(p.protocol) + "/" + std::to_string(p.port);
  return out;
}

// "name/PROTO/port,…" → ports; the reason on failure.
Result<std::vector<EndpointPort>> decodePorts(const std::string& text) {
  std::vector<EndpointPort> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    const size_t a = item.find('/'), b = item.rfind('/');
    if (a == std::string::npos || a == b)
      return Status(Code::kInvalidArgument, "\"" + item + "\" is not name/PROTOCOL/port");
    auto proto = parseProtocol(item.substr(a + 1, b - a - 1));
    if (!proto) return proto.status();
    const std::string port = item.substr(b + 1);
    if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), ::isdigit) ||
        std::stoul(port) == 0 || std::stoul(port) > 65535)
      return Status(Code::kInvalidArgument, "\"" + port + "\" is not a port number");
    out.push_back({item.substr(0, a), *proto, static_cast<uint16_t>(std::stoul(port))});
    start = end + 1;
  }
  return out;
}

bool isDnsSubdomain(const std::string& s) {
  if (s.empty() || s.size() > 253) return false;
  for (char c : s)
    if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) ||
          c == '-' || c == '.'))
      return false;
  return std::isalnum(static_cast<unsigned char>(s.front())) && std::isalnum(static_cast<unsigned char>(s.back()));
}

}  // namespace

struct KubeLeaseStore::Impl {
  KubeLeaseStoreConfig cfg;
  std::unique_ptr<kube::RestClient> client;
  mutable std::mutex mu;
  std::map<std::string, json> held;  // identity → the Lease object as last written by us
  Stats stats;
  std::mutex notifyMu;
  std::function<void()> onChange;

  std::string collection() const {
    return "/apis/coordination.k8s.io/v1/namespaces/" + cfg.ns + "/leases";
  }
  std::string objectName(const std::string& identity) const { return cfg.group + "-" + identity; }
  std::string path(const std::string& identity) const { return collection() + "/" + objectName(identity); }

  void notify() {
    std::lock_guard lock(notifyMu);
    if (onChange) onChange();
  }
  void countConflict() {
    std::lock_guard lock(mu);
    stats.conflicts++;
  }

  // The Lease object for `spec`, keeping identity fields (uid, resourceVersion, acquireTime,
  // leaseTransitions) of `base` when given.
  json build(const LeaseSpec& spec, Clock::WallTime renewTime, const json& base) const {
    json obj = base.is_object() ? base : json::object();
    obj["apiVersion"] = "coordination.k8s.io/v1";
    obj["kind"] = "Lease";
    json& meta = obj["metadata"];
    meta["name"] = objectName(spec.identity);
    meta["namespace"] = cfg.ns;
    meta["labels"][kLeaseGroupLabel] = cfg.group;
    json& ann = meta["annotations"];
    ann[kLeaseAddressAnnotation] = spec.address.toString();
    ann[kLeasePortsAnnotation] = encodePorts(spec.ports);
    ann[kLeaseTtlAnnotation] = std::to_string(spec.ttl.count());
    if (spec.nodeName.empty()) ann.erase(kLeaseNodeAnnotation); else ann[kLeaseNodeAnnotation] = spec.nodeName;
    if (spec.zone.empty()) ann.erase(kLeaseZoneAnnotation); else ann[kLeaseZoneAnnotation] = spec.zone;
    json& s = obj["spec"];
    s["holderIdentity"] = spec.identity;
    s["leaseDurationSeconds"] = std::max<int64_t>(1, (spec.ttl.count() + 999) / 1000);
    s["renewTime"] = microTime(renewTime);
    if (!s.contains("acquireTime")) s["acquireTime"] = s["renewTime"];
    if (!s.contains("leaseTransitions")) s["leaseTransitions"] = 0;
    return obj;
  }

  Result<LeaseRecord> decode(const json& obj, Problem& problem) const {
    const std::string name = obj.value("/metadata/name"_json_pointer, std::string());
    problem = {"Lease " + cfg.ns + "/" + name, "", ""};
    auto fail = [&](std::string field, std::string reason) {
      problem.field = std::move(field);
      problem.reason = std::move(reason);
      return Status(Code::kInvalidArgument, problem.toString());
    };
    try {
      const json ann = obj.value("/metadata/annotations"_json_pointer, json::object());
      auto annotation = [&](const char* key) { return ann.value(key, std::string()); };
      LeaseRecord r;
      r.spec.identity = obj.value("/spec/holderIdentity"_json_pointer, std::string());
      if (name != objectName(r.spec.identity))
        return fail("spec.holderIdentity", "does not match the object name");
      auto addr = IPAddress::parse(annotation(kLeaseAddressAnnotation));
      if (!addr) return fail(std::string("metadata.annotations[") + kLeaseAddressAnnotation + "]", addr.status().message());
      r.spec.address = *addr;
      auto ports = decodePorts(annotation(kLeasePortsAnnotation));
      if (!ports) return fail(std::string("metadata.annotations[") + kLeasePortsAnnotation + "]", ports.status().message());
      r.spec.ports = std::move(*ports);
      r.spec.nodeName = annotation(kLeaseNodeAnnotation);
      r.spec.zone = annotation(kLeaseZoneAnnotation);
      const std::string ttl = annotation(kLeaseTtlAnnotation);
      if (!ttl.empty() && ttl.size() < 12 && std::all_of(ttl.begin(), ttl.end(), ::isdigit)) {
        r.spec.ttl = std::chrono::milliseconds(std::stoll(ttl));
      } else {
        // Written by someone else: the spec's whole seconds.
        r.spec.ttl = std::chrono::seconds(obj.value("/spec/leaseDurationSeconds"_json_pointer, int64_t{0}));
      }
      r.renewTime = parseMicroTime(obj.value("/spec/renewTime"_json_pointer, std::string()));
      r.leaseId = leaseIdOf(obj);
      r.generation = generationOf(obj);
      if (Status s = validateLeaseSpec(r.spec); !s) return fail("spec", s.message());
      return r;
    } catch (const json::exception& e) {
      return fail("", e.what());
    }
  }

  // DELETE of `identity` only if the object still is `current` (uid and resourceVersion
  // preconditions), so a takeover or renewal landing after the GET survives: 409 then.
  Result<kube::RestReply> deleteIfUnchanged(const std::string& identity, const json& current) {
    json options = {{"apiVersion", "v1"},
                    {"kind", "DeleteOptions"},
                    {"preconditions",
                     {{"uid", current.value("/metadata/uid"_json_pointer, std::string())},
                      {"resourceVersion", current.value("/metadata/resourceVersion"_json_pointer, std::string())}}}};
    return call("DELETE", path(identity), options);
  }

  Result<kube::RestReply> call(const std::string& method, const std::string& target, const json& body = nullptr) {
    return client->call(method, target, body);
  }

  // Writes `obj` (PUT) and remembers the answer; returns the reply for the caller's decisions.
  Result<kube::RestReply> put(const std::string& identity, const json& obj) {
    auto reply = call("PUT", path(identity), obj);
    if (reply && reply->ok()) {
      std::lock_guard lock(mu);
      held[identity] = reply->body;
    }
    if (reply && reply->status == 409) countConflict();
    return reply;
  }

  Result<json> get(const std::string& identity) {
    auto reply = call("GET", path(identity));
    if (!reply) return reply.status();
    if (!reply->ok()) return reply->toStatus("GET lease " + identity);
    return reply->body;
  }
};

Result<std::unique_ptr<KubeLeaseStore>> KubeLeaseStore::create(KubeLeaseStoreConfig config) {
  if (config.ns.empty() || !isDnsSubdomain(config.ns) || config.ns.find('.') != std::string::npos)
    return Status(Code::kInvalidArgument, "kubernetes lease store: namespace \"" + config.ns + "\" is not a DNS label");
  if (!isDnsSubdomain(config.group) || config.group.find('.') != std::string::npos || config.group.size() > 63)
    return Status(Code::kInvalidArgument, "kubernetes lease store: group \"" + config.group + "\" is not a DNS label");
  kube::RestOptions ro{config.requestTimeout, config.connectTimeout};
  auto client = kube::RestClient::create(config.client, ro);
  if (!client) return client.status();
  auto impl = std::make_unique<Impl>();
  impl->cfg = std::move(config);
  impl->client = std::move(*client);
  return std::unique_ptr<KubeLeaseStore>(new KubeLeaseStore(std::move(impl)));
}

KubeLeaseStore::KubeLeaseStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KubeLeaseStore::~KubeLeaseStore() = default;

std::string KubeLeaseStore::name() const { return "kubernetes:" + impl_->cfg.ns + "/" + impl_->cfg.group; }

Result<LeaseHandle> KubeLeaseStore::acquire(const LeaseSpec& spec, Clock::WallTime renewTime) {
  if (Status s = validateLeaseSpec(spec); !s) return s;
  Impl& m = *impl_;
  if (!isDnsSubdomain(m.objectName(spec.identity)))
    return Status(Code::kInvalidArgument, "lease identity \"" + spec.identity + "\": \"" + m.objectName(spec.identity) +
                                              "\" is not a valid Kubernetes object name (lowercase, digits, '-', '.')");
  // create → on AlreadyExists take the object over (PUT with its resourceVersion and one more
  // leaseTransition, which changes the lease id) → on a lost race start again. Three rounds:
  // more means several processes fight over one identity, which the caller should hear about.
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto created = m.call("POST", m.collection(), m.build(spec, renewTime, nullptr));
    if (!created) return created.status();
    json written;
    if (created->ok()) {
      written = created->body;
    } else if (created->status == 409) {
      auto current = m.get(spec.identity);
      if (!current) {
        if (current.status().code() == Code::kNotFound) continue;  // deleted in between
        return current.status();
      }
      json next = m.build(spec, renewTime, *current);
      next["spec"]["acquireTime"] = next["spec"]["renewTime"];
      next["spec"]["leaseTransitions"] = current->value("/spec/leaseTransitions"_json_pointer, int64_t{0}) + 1;
      auto put = m.put(spec.identity, next);
      if (!put) return put.status();
      if (put->status == 409 || put->status == 404) continue;
      if (!put->ok()) return put->toStatus("taking over lease " + spec.identity);
      written = put->body;
      std::lock_guard lock(m.mu);
      m.stats.takeovers++;
    } else {
      return created->toStatus("creating lease " + spec.identity);
    }
    {
      std::lock_guard lock(m.mu);
      m.held[spec.identity] = written;
    }
    m.notify();
    return LeaseHandle{spec.identity, leaseIdOf(written), generationOf(written), spec.ttl};
  }
  return Status(Code::kAborted, "lease " + spec.identity + ": lost the race to write it three times in a row");
}

Status KubeLeaseStore::renew(LeaseHandle& handle, Clock::WallTime renewTime) {
  Impl& m = *impl_;
  json base;
  {
    std::lock_guard lock(m.mu);
    auto it = m.held.find(handle.identity);
    if (it != m.held.end()) base = it->second;
  }
  if (base.is_null()) {
    auto current = m.get(handle.identity);
    if (!current) return current.status();
    base = *current;
  }
  // One retry after a Conflict: someone else wrote the object (a human editing annotations, an
  // observer's own test). If it is still our lease, write again on top of what is there.
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (leaseIdOf(base) != handle.leaseId)
      return {Code::kNotFound, "lease " + handle.identity + " was taken over"};
    Problem ignored;
    auto rec = m.decode(base, ignored);
    if (!rec) return rec.status();
    auto put = m.put(handle.identity, m.build(rec->spec, renewTime, base));
    if (!put) return put.status();
    if (put->ok()) {
      handle.generation = generationOf(put->body);
      m.notify();
      return Status::ok();
    }
    if (put->status == 404) {
      std::lock_guard lock(m.mu);
      m.held.erase(handle.identity);
      return {Code::kNotFound, "lease " + handle.identity + " is gone"};
    }
    if (put->status != 409) return put->toStatus("renewing lease " + handle.identity);
    auto current = m.get(handle.identity);
    if (!current) return current.status();
    base = *current;
  }
  return {Code::kAborted, "lease " + handle.identity + ": renewal conflicted twice in a row (another writer)"};
}

Status KubeLeaseStore::release(const LeaseHandle& handle) {
  Impl& m = *impl_;
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto current = m.get(handle.identity);
    if (!current) return current.status().code() == Code::kNotFound ? Status::ok() : current.status();
    if (leaseIdOf(*current) != handle.leaseId) return Status::ok();  // superseded: not ours to end
    auto del = m.deleteIfUnchanged(handle.identity, *current);
    if (!del) return del.status();
    if (del->ok() || del->status == 404) {
      {
        std::lock_guard lock(m.mu);
        m.held.erase(handle.identity);
      }
      m.notify();
      return Status::ok();
    }
    if (del->status != 409) return del->toStatus("releasing lease " + handle.identity);
    m.countConflict();
  }
  return {Code::kAborted, "lease " + handle.identity + ": release conflicted twice in a row"};
}

Status KubeLeaseStore::collect(const LeaseRecord& seen) {
  Impl& m = *impl_;
  const std::string& identity = seen.spec.identity;
  auto current = m.get(identity);
  if (!current) return current.status().code() == Code::kNotFound ? Status::ok() : current.status();
  // Renewed or taken over since the observer judged it dead: alive after all.
  if (leaseIdOf(*current) != seen.leaseId || generationOf(*current) != seen.generation) return Status::ok();
  auto del = m.deleteIfUnchanged(identity, *current);
  if (!del) return del.status();
  if (del->status == 404 || del->status == 409) return Status::ok();  // gone, or written meanwhile
  if (!del->ok()) return del->toStatus("collecting dead lease " + identity);
  {
    std::lock_guard lock(m.mu);
    m.stats.collected++;
  }
  m.notify();
  return Status::ok();
}

Result<LeaseListing> KubeLeaseStore::list() {
  Impl& m = *impl_;
  const std::string target =
      m.collection() + "?labelSelector=" + kube::queryEscape(std::string(kLeaseGroupLabel) + "=" + m.cfg.group);
  auto reply = m.call("GET", target);
  if (!reply) return reply.status();
  if (!reply->ok()) return reply->toStatus("listing leases");
  LeaseListing out;
  const json& items = reply->body.value("items", json::array());
  for (const json& item : items) {
    Problem problem;
    auto rec = m.decode(item, problem);
    if (rec) {
      out.leases.push_back(std::move(*rec));
    } else {
      out.errors.push_back({m.cfg.ns + "/" + item.value("/metadata/name"_json_pointer, std::string()), problem});
    }
  }
  std::sort(out.leases.begin(), out.leases.end(),
            [](const LeaseRecord& a, const LeaseRecord& b) { return a.spec.identity < b.spec.identity; });
  const std::string rv = reply->body.value("/metadata/resourceVersion"_json_pointer, std::string());
  if (!rv.empty() && rv.size() < 19 && std::all_of(rv.begin(), rv.end(), ::isdigit)) out.revision = std::stoll(rv);
  return out;
}

void KubeLeaseStore::setOnChange(std::function<void()> onChange) {
  std::lock_guard lock(impl_->notifyMu);
  impl_->onChange = std::move(onChange);
}

KubeLeaseStore::Stats KubeLeaseStore::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

}  // namespace sluice
