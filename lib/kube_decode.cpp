// kube_decode.cpp — Kubernetes JSON → model values, with the API's defaulting.
//
// Go's encoding/json is the reference for what a field may hold: `null` means the same as an
// absent field (nil pointer / nil slice / zero string), integers must be JSON integers (80.0 or
// "80" are rejected, as kubectl apply rejects them), and unknown fields are ignored. Values the
// apiserver's validation would reject are rejected here too, because the file source feeds
// hand-written manifests that never met an apiserver; enumerations that kube-proxy reads
// leniently (ipMode, trafficDistribution) are read the same lenient way, so a newer apiserver's
// new value never makes a whole Service disappear.
#include "kube_decode.h"

#include <fmt/format.h>

#include <set>
#include <string_view>
#include <utility>

namespace sluice::kube {
namespace {

using json = nlohmann::json;

const json& emptyObject() {
  static const json kEmpty = json::object();
  return kEmpty;
}

// The member `key` of `obj`, or nullptr when absent or null (Go reads both as the zero value).
const json* member(const json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string join(const std::string& base, std::string_view key) {
  if (base.empty()) return std::string(key);
  std::string s;
  s.reserve(base.size() + 1 + key.size());
  s += base;
  s += '.';
  s += key;
  return s;
}

std::string indexed(const std::string& base, size_t i) { return fmt::format("{}[{}]", base, i); }

// Collects the first failure of one object's decoding. Every reader returns false once the
// object has failed, so decoding stops at the first bad field and names it.
class Reader {
 public:
  explicit Reader(std::string object) : object_(std::move(object)) {}

  bool fail(std::string field, std::string reason) {
    if (!error_) error_ = Problem{object_, std::move(field), std::move(reason)};
    return false;
  }
  Problem takeError() { return std::move(*error_); }

  // A string member; absent/null leaves `out` unchanged.
  bool string(const json& obj, std::string_view key, const std::string& base, std::string& out) {
    const json* v = member(obj, key);
    if (!v) return true;
    if (!v->is_string()) return fail(join(base, key), "must be a string");
    out = v->get_ref<const std::string&>();
    return true;
  }

  // An integer member within [lo, hi]; absent/null leaves `out` unset.
  bool integer(const json& obj, std::string_view key, const std::string& base, int64_t lo,
               int64_t hi, std::optional<int64_t>& out) {
    const json* v = member(obj, key);
    if (!v) return true;
    int64_t n = 0;
    if (v->is_number_integer()) {
      n = v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX
                                                                             : v->get<int64_t>();
    } else {
      return fail(join(base, key), "must be an integer");
    }
    if (n < lo || n > hi)
      return fail(join(base, key), fmt::format("{} is out of range [{}, {}]", n, lo, hi));
    out = n;
    return true;
  }

  // A boolean member; absent/null leaves `out` unchanged (the caller holds the default).
  bool boolean(const json& obj, std::string_view key, const std::string& base, bool& out) {
    const json* v = member(obj, key);
    if (!v) return true;
    if (!v->is_boolean()) return fail(join(base, key), "must be true or false");
    out = v->get<bool>();
    return true;
  }

  // An object member (absent/null → the empty object).
  bool object(const json& obj, std::string_view key, const std::string& base, const json*& out) {
    const json* v = member(obj, key);
    out = v ? v : &emptyObject();
    if (!out->is_object()) return fail(join(base, key), "must be an object");
    return true;
  }

  // Calls fn(item, "base.key[i]") for each element of an array member (absent/null → none).
  template <typename Fn>
  bool array(const json& obj, std::string_view key, const std::string& base, Fn&& fn) {
    const json* v = member(obj, key);
    if (!v) return true;
    std::string path = join(base, key);
    if (!v->is_array()) return fail(path, "must be a list");
    for (size_t i = 0; i < v->size(); ++i)
      if (!fn((*v)[i], indexed(path, i))) return false;
    return true;
  }

  bool ip(const json& value, const std::string& path, IPAddress& out) {
    if (!value.is_string()) return fail(path, "must be a string");
    return ipText(value.get_ref<const std::string&>(), path, out);
  }

  bool ipText(std::string_view text, const std::string& path, IPAddress& out) {
    auto parsed = IPAddress::parse(text);
    if (!parsed) return fail(path, parsed.status().message());
    out = *parsed;
    return true;
  }

  bool protocol(const json& obj, const std::string& base, Protocol& out) {
    std::string text;
    if (!string(obj, "protocol", base, text)) return false;
    auto p = parseProtocol(text);
    if (!p) return fail(join(base, "protocol"), p.status().message());
    out = *p;
    return true;
  }

  bool labels(const json& obj, std::map<std::string, std::string>& out) {
    const json* meta = nullptr;
    if (!object(obj, "metadata", "", meta)) return false;
    const json* labels = nullptr;
    if (!object(*meta, "labels", "metadata", labels)) return false;
    for (auto it = labels->begin(); it != labels->end(); ++it) {
      if (!it->is_string()) return fail("metadata.labels." + it.key(), "must be a string");
      out.emplace(it.key(), it->get_ref<const std::string&>());
    }
    return true;
  }

 private:
  std::string object_;
  std::optional<Problem> error_;
};

std::string describe(const char* kind, const ObjectName& id) {
  return fmt::format("{} {}/{}", kind, id.ns, id.name.empty() ? "<unnamed>" : id.name);
}

// Checks shared by every kind: a JSON object with a name.
bool checkEnvelope(Reader& r, const json& obj, const ObjectName& id) {
  if (!obj.is_object()) return r.fail("", "not a JSON object");
  const json* meta = nullptr;
  if (!r.object(obj, "metadata", "", meta)) return false;
  std::string ns, name;
  if (!r.string(*meta, "namespace", "metadata", ns) || !r.string(*meta, "name", "metadata", name))
    return false;
  if (id.name.empty()) return r.fail("metadata.name", "missing");
  return true;
}

template <typename T>
Decoded<T> failed(Reader& r) {
  Decoded<T> d;
  d.error = r.takeError();
  return d;
}

template <typename T>
Decoded<T> succeeded(T value) {
  Decoded<T> d;
  d.value = std::move(value);
  return d;
}

// --- Service ----------------------------------------------------------------------------------

bool decodeServiceType(Reader& r, const json& spec, ServiceType& out) {
  std::string type;
  if (!r.string(spec, "type", "spec", type)) return false;
  if (type.empty() || type == "ClusterIP") out = ServiceType::kClusterIP;
  else if (type == "NodePort") out = ServiceType::kNodePort;
  else if (type == "LoadBalancer") out = ServiceType::kLoadBalancer;
  else if (type == "ExternalName") out = ServiceType::kExternalName;
  else
    return r.fail("spec.type", fmt::format("unknown type \"{}\" (ClusterIP, NodePort, "
                                           "LoadBalancer or ExternalName)", type));
  return true;
}

// spec.clusterIP / spec.clusterIPs / spec.ipFamilies. "None" (headless) and "" (not allocated)
// leave no cluster IP. clusterIPs is authoritative when set (dual-stack servers always set both,
// primary first); a manifest may give only clusterIP.
bool decodeClusterIPs(Reader& r, const json& spec, std::vector<IPAddress>& out) {
  std::string single;
  if (!r.string(spec, "clusterIP", "spec", single)) return false;
  std::vector<std::string> texts;
  bool ok = r.array(spec, "clusterIPs", "spec", [&](const json& v, const std::string& path) {
    if (!v.is_string()) return r.fail(path, "must be a string");
    texts.push_back(v.get<std::string>());
    return true;
  });
  if (!ok) return false;
  if (texts.size() > 2) return r.fail("spec.clusterIPs", "at most two addresses (one per family)");
  if (!texts.empty() && !single.empty() && texts[0] != single)
    return r.fail("spec.clusterIPs[0]", fmt::format("\"{}\" does not match spec.clusterIP \"{}\"",
                                                    texts[0], single));
  const bool fromList = !texts.empty();
  if (!fromList && !single.empty()) texts.push_back(single);
  for (size_t i = 0; i < texts.size(); ++i) {
    std::string path = fromList ? indexed("spec.clusterIPs", i) : "spec.clusterIP";
    if (texts[i] == "None") {
      if (texts.size() > 1) return r.fail(path, "\"None\" must be the only cluster IP");
      continue;  // headless
    }
    if (texts[i].empty()) return r.fail(path, "empty address");
    IPAddress ip;
    if (!r.ipText(texts[i], path, ip)) return false;
    if (!out.empty() && out.front().family() == ip.family())
      return r.fail(path, "the two cluster IPs must be of different families");
    out.push_back(ip);
  }

  // ipFamilies[i] names the family of clusterIPs[i]; a mismatch is a broken object.
  size_t index = 0;
  std::set<std::string> seen;
  return r.array(spec, "ipFamilies", "spec", [&](const json& v, const std::string& path) {
    size_t i = index++;
    if (!v.is_string()) return r.fail(path, "must be a string");
    const auto& fam = v.get_ref<const std::string&>();
    if (fam != "IPv4" && fam != "IPv6") return r.fail(path, "must be IPv4 or IPv6");
    if (!seen.insert(fam).second) return r.fail(path, "duplicate family");
    if (i >= 2) return r.fail(path, "at most two families");
    if (i < out.size() && fam != familyName(out[i].family()))
      return r.fail(path, fmt::format("{} does not match cluster IP {}", fam,
                                      out[i].toString()));
    return true;
  });
}

bool decodeServicePorts(Reader& r, const json& spec, ServiceType type,
                        std::vector<ServicePort>& out) {
  bool ok = r.array(spec, "ports", "spec", [&](const json& p, const std::string& path) {
    if (!p.is_object()) return r.fail(path, "must be an object");
    ServicePort port;
    std::optional<int64_t> number, nodePort;
    if (!r.string(p, "name", path, port.name) || !r.protocol(p, path, port.protocol) ||
        !r.integer(p, "port", path, 1, 65535, number) ||
        !r.integer(p, "nodePort", path, 0, 65535, nodePort))
      return false;
    if (!number) return r.fail(join(path, "port"), "required");
    port.port = static_cast<uint16_t>(*number);
    port.nodePort = static_cast<uint16_t>(nodePort.value_or(0));
    if (port.nodePort != 0 && (type == ServiceType::kClusterIP || type == ServiceType::kExternalName))
      return r.fail(join(path, "nodePort"), "may not be used when type is ClusterIP or ExternalName");
    out.push_back(std::move(port));
    return true;
  });
  if (!ok) return false;
  // As the apiserver validates: several ports need distinct names, and a port/protocol pair
  // names one Service port only (the data plane keys its maps by it).
  std::set<std::string> names;
  std::set<std::pair<uint16_t, Protocol>> keys;
  std::set<std::pair<uint16_t, Protocol>> nodePorts;
  for (size_t i = 0; i < out.size(); ++i) {
    const auto& p = out[i];
    std::string path = indexed("spec.ports", i);
    if (out.size() > 1 && p.name.empty())
      return r.fail(join(path, "name"), "required when the Service has more than one port");
    if (!names.insert(p.name).second) return r.fail(join(path, "name"), "duplicate port name");
    if (!keys.insert({p.port, p.protocol}).second)
      return r.fail(path, fmt::format("duplicate port {}/{}", p.port, protocolName(p.protocol)));
    if (p.nodePort != 0 && !nodePorts.insert({p.nodePort, p.protocol}).second)
      return r.fail(join(path, "nodePort"), fmt::format("duplicate nodePort {}", p.nodePort));
  }
  return true;
}

bool decodeTrafficPolicy(Reader& r, const json& spec, std::string_view key, bool legacyAliases,
                         TrafficPolicy& out) {
  std::string text;
  if (!r.string(spec, key, "spec", text)) return false;
  // "Global"/"OnlyLocal" are the pre-GA spellings of externalTrafficPolicy.
  if (text.empty() || text == "Cluster" || (legacyAliases && text == "Global"))
    out = TrafficPolicy::kCluster;
  else if (text == "Local" || (legacyAliases && text == "OnlyLocal"))
    out = TrafficPolicy::kLocal;
  else
    return r.fail(join("spec", key), fmt::format("unknown policy \"{}\" (Cluster or Local)", text));
  return true;
}

bool decodeAffinity(Reader& r, const json& spec, Service& svc) {
  std::string text;
  if (!r.string(spec, "sessionAffinity", "spec", text)) return false;
  if (text.empty() || text == "None") svc.sessionAffinity = SessionAffinity::kNone;
  else if (text == "ClientIP") svc.sessionAffinity = SessionAffinity::kClientIP;
  else return r.fail("spec.sessionAffinity", fmt::format("unknown affinity \"{}\" (None or ClientIP)", text));
  const json* config = nullptr;
  const json* clientIP = nullptr;
  std::optional<int64_t> timeout;
  if (!r.object(spec, "sessionAffinityConfig", "spec", config) ||
      !r.object(*config, "clientIP", "spec.sessionAffinityConfig", clientIP) ||
      !r.integer(*clientIP, "timeoutSeconds", "spec.sessionAffinityConfig.clientIP", 1, 86400,
                 timeout))
    return false;
  if (timeout) svc.affinityTimeoutSeconds = static_cast<uint32_t>(*timeout);
  return true;
}

bool decodeIPList(Reader& r, const json& spec, std::string_view key, std::vector<IPAddress>& out) {
  return r.array(spec, key, "spec", [&](const json& v, const std::string& path) {
    IPAddress ip;
    if (!r.ip(v, path, ip)) return false;
    out.push_back(ip);
    return true;
  });
}

bool decodeSourceRanges(Reader& r, const json& spec, std::vector<IPPrefix>& out) {
  return r.array(spec, "loadBalancerSourceRanges", "spec", [&](const json& v, const std::string& path) {
    if (!v.is_string()) return r.fail(path, "must be a string");
    // kube-proxy trims surrounding blanks before parsing a range.
    std::string_view text = v.get_ref<const std::string&>();
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
    while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
    if (text.find('/') == std::string_view::npos) return r.fail(path, "must be a CIDR (address/bits)");
    auto prefix = IPPrefix::parse(text);
    if (!prefix) return r.fail(path, prefix.status().message());
    out.push_back(*prefix);
    return true;
  });
}

// status.loadBalancer.ingress: entries without an IP (hostname-only) give the node nothing to
// intercept. ipMode is read as kube-proxy reads it: only an absent ipMode or "VIP" is a VIP;
// anything else ("Proxy", or a mode this version does not know) must not be intercepted.
bool decodeIngress(Reader& r, const json& obj, std::vector<LoadBalancerIngress>& out) {
  const json* status = nullptr;
  const json* lb = nullptr;
  if (!r.object(obj, "status", "", status) || !r.object(*status, "loadBalancer", "status", lb))
    return false;
  return r.array(*lb, "ingress", "status.loadBalancer", [&](const json& ing, const std::string& path) {
    if (!ing.is_object()) return r.fail(path, "must be an object");
    std::string address, mode;
    if (!r.string(ing, "ip", path, address)) return false;
    if (!r.string(ing, "ipMode", path, mode)) return false;
    if (address.empty()) return true;
    LoadBalancerIngress entry;
    if (!r.ipText(address, join(path, "ip"), entry.ip)) return false;
    entry.proxyMode = member(ing, "ipMode") != nullptr && mode != "VIP";
    out.push_back(entry);
    return true;
  });
}

std::string decodeTrafficDistribution(const std::string& text) {
  // Unknown values mean "no preference", as kube-proxy reads them.
  if (text == "PreferClose" || text == "PreferSameZone" || text == "PreferSameNode") return text;
  return "";
}

// --- EndpointSlice ----------------------------------------------------------------------------

bool decodeEndpointPorts(Reader& r, const json& obj, const std::string& base,
                         std::vector<EndpointPort>& out) {
  return r.array(obj, "ports", base, [&](const json& p, const std::string& path) {
    if (!p.is_object()) return r.fail(path, "must be an object");
    EndpointPort port;
    std::optional<int64_t> number;
    if (!r.string(p, "name", path, port.name) || !r.protocol(p, path, port.protocol) ||
        !r.integer(p, "port", path, 0, 65535, number))
      return false;
    // A nil (or zero) port is "all ports" in the API, which no proxy can forward to; kube-proxy
    // ignores such entries, and so does sluice.
    if (!number || *number == 0) return true;
    port.port = static_cast<uint16_t>(*number);
    out.push_back(std::move(port));
    return true;
  });
}

bool decodeHints(Reader& r, const json& hints, const std::string& base, std::string_view key,
                 std::vector<std::string>& out) {
  return r.array(hints, key, base, [&](const json& h, const std::string& path) {
    if (!h.is_object()) return r.fail(path, "must be an object");
    std::string name;
    if (!r.string(h, "name", path, name)) return false;
    out.push_back(std::move(name));
    return true;
  });
}

bool decodeSliceEndpoint(Reader& r, const json& e, const std::string& path, IPFamily family,
                         Endpoint& out) {
  if (!e.is_object()) return r.fail(path, "must be an object");
  bool ok = r.array(e, "addresses", path, [&](const json& a, const std::string& apath) {
    IPAddress ip;
    if (!r.ip(a, apath, ip)) return false;
    if (ip.family() != family)
      return r.fail(apath, fmt::format("{} address in a slice of addressType {}",
                                       familyName(ip.family()), familyName(family)));
    out.addresses.push_back(ip);
    return true;
  });
  if (!ok) return false;
  const json* conditions = nullptr;
  const json* hints = nullptr;
  std::string cpath = join(path, "conditions");
  std::string hpath = join(path, "hints");
  std::vector<std::string> zones, nodes;
  ok = r.object(e, "conditions", path, conditions) && r.boolean(*conditions, "ready", cpath, out.ready) &&
       r.boolean(*conditions, "serving", cpath, out.serving) &&
       r.boolean(*conditions, "terminating", cpath, out.terminating) &&
       r.string(e, "nodeName", path, out.nodeName) && r.string(e, "zone", path, out.zone) &&
       r.object(e, "hints", path, hints) && decodeHints(r, *hints, hpath, "forZones", zones) &&
       decodeHints(r, *hints, hpath, "forNodes", nodes);
  out.hints = EndpointHints(std::move(zones), std::move(nodes));
  return ok;
}

constexpr std::string_view kServiceNameLabel = "kubernetes.io/service-name";

// --- Endpoints (legacy) -----------------------------------------------------------------------

struct LegacyAddress {
  IPAddress ip;
  std::string nodeName;
  bool ready;
};

bool decodeLegacyAddresses(Reader& r, const json& subset, const std::string& base,
                           std::string_view key, bool ready, std::vector<LegacyAddress>& out) {
  return r.array(subset, key, base, [&](const json& a, const std::string& path) {
    if (!a.is_object()) return r.fail(path, "must be an object");
    LegacyAddress addr{{}, {}, ready};
    const json* ip = member(a, "ip");
    if (!ip) return r.fail(join(path, "ip"), "required");
    if (!r.ip(*ip, join(path, "ip"), addr.ip) || !r.string(a, "nodeName", path, addr.nodeName))
      return false;
    out.push_back(std::move(addr));
    return true;
  });
}

}  // namespace

ObjectName objectName(const nlohmann::json& obj) {
  ObjectName id;
  const json* meta = member(obj, "metadata");
  if (meta) {
    const json* ns = member(*meta, "namespace");
    const json* name = member(*meta, "name");
    if (ns && ns->is_string()) id.ns = ns->get<std::string>();
    if (name && name->is_string()) id.name = name->get<std::string>();
  }
  if (id.ns.empty()) id.ns = "default";
  return id;
}

Decoded<Service> decodeService(const nlohmann::json& obj) {
  Service svc;
  svc.id = objectName(obj);
  Reader r(describe("Service", svc.id));
  if (!checkEnvelope(r, obj, svc.id) || !r.labels(obj, svc.labels)) return failed<Service>(r);
  const json* spec = nullptr;
  if (!r.object(obj, "spec", "", spec)) return failed<Service>(r);
  std::optional<int64_t> healthCheckNodePort;
  std::string distribution;
  bool ok = decodeServiceType(r, *spec, svc.type) && decodeClusterIPs(r, *spec, svc.clusterIPs) &&
            decodeServicePorts(r, *spec, svc.type, svc.ports) &&
            decodeIPList(r, *spec, "externalIPs", svc.externalIPs) &&
            decodeSourceRanges(r, *spec, svc.loadBalancerSourceRanges) &&
            decodeTrafficPolicy(r, *spec, "externalTrafficPolicy", true,
                                svc.externalTrafficPolicy) &&
            decodeTrafficPolicy(r, *spec, "internalTrafficPolicy", false,
                                svc.internalTrafficPolicy) &&
            decodeAffinity(r, *spec, svc) &&
            r.integer(*spec, "healthCheckNodePort", "spec", 0, 65535, healthCheckNodePort) &&
            r.string(*spec, "trafficDistribution", "spec", distribution) &&
            decodeIngress(r, obj, svc.loadBalancerIngress);
  if (!ok) return failed<Service>(r);
  svc.healthCheckNodePort = static_cast<uint16_t>(healthCheckNodePort.value_or(0));
  svc.trafficDistribution = decodeTrafficDistribution(distribution);
  return succeeded(std::move(svc));
}

Decoded<EndpointSlice> decodeEndpointSlice(const nlohmann::json& obj) {
  EndpointSlice slice;
  slice.id = objectName(obj);
  Reader r(describe("EndpointSlice", slice.id));
  if (!checkEnvelope(r, obj, slice.id)) return failed<EndpointSlice>(r);

  std::string addressType;
  if (!r.string(obj, "addressType", "", addressType)) return failed<EndpointSlice>(r);
  if (addressType == "IPv4") slice.addressType = IPFamily::kV4;
  else if (addressType == "IPv6") slice.addressType = IPFamily::kV6;
  else if (addressType == "FQDN") {
    r.fail("addressType", "FQDN slices are not proxied");
    return failed<EndpointSlice>(r);
  } else {
    r.fail("addressType", addressType.empty() ? "required (IPv4 or IPv6)"
                                              : fmt::format("unknown addressType \"{}\"", addressType));
    return failed<EndpointSlice>(r);
  }

  std::map<std::string, std::string> labels;
  if (!r.labels(obj, labels)) return failed<EndpointSlice>(r);
  auto svcName = labels.find(std::string(kServiceNameLabel));
  if (svcName == labels.end() || svcName->second.empty()) {
    r.fail(fmt::format("metadata.labels.{}", kServiceNameLabel),
           "missing: the slice belongs to no Service");
    return failed<EndpointSlice>(r);
  }
  slice.serviceName = svcName->second;

  bool ok = decodeEndpointPorts(r, obj, "", slice.ports) &&
            r.array(obj, "endpoints", "", [&](const json& e, const std::string& path) {
              Endpoint ep;
              if (!decodeSliceEndpoint(r, e, path, slice.addressType, ep)) return false;
              slice.endpoints.push_back(std::move(ep));
              return true;
            });
  if (!ok) return failed<EndpointSlice>(r);
  return succeeded(std::move(slice));
}

Decoded<std::vector<EndpointSlice>> decodeEndpoints(const nlohmann::json& obj) {
  using Slices = std::vector<EndpointSlice>;
  ObjectName id = objectName(obj);
  Reader r(describe("Endpoints", id));
  if (!checkEnvelope(r, obj, id)) return failed<Slices>(r);
  Slices out;
  bool ok = r.array(obj, "subsets", "", [&](const json& subset, const std::string& path) {
    if (!subset.is_object()) return r.fail(path, "must be an object");
    std::vector<LegacyAddress> addrs;
    std::vector<EndpointPort> ports;
    bool ok = decodeLegacyAddresses(r, subset, path, "addresses", true, addrs) &&
              decodeLegacyAddresses(r, subset, path, "notReadyAddresses", false, addrs) &&
              r.array(subset, "ports", path, [&](const json& p, const std::string& ppath) {
                if (!p.is_object()) return r.fail(ppath, "must be an object");
                EndpointPort port;
                std::optional<int64_t> number;
                if (!r.string(p, "name", ppath, port.name) || !r.protocol(p, ppath, port.protocol) ||
                    !r.integer(p, "port", ppath, 1, 65535, number))
                  return false;
                if (!number) return r.fail(join(ppath, "port"), "required");
                port.port = static_cast<uint16_t>(*number);
                ports.push_back(std::move(port));
                return true;
              });
    if (!ok) return false;
    // One slice per address family, as the mirroring controller splits them. A not-ready
    // address is neither ready nor serving: the Endpoints API has no terminating state.
    for (IPFamily family : {IPFamily::kV4, IPFamily::kV6}) {
      EndpointSlice slice;
      for (const auto& a : addrs) {
        if (a.ip.family() != family) continue;
        Endpoint e;
        e.addresses = {a.ip};
        e.ready = e.serving = a.ready;
        e.nodeName = a.nodeName;
        slice.endpoints.push_back(std::move(e));
      }
      if (slice.endpoints.empty()) continue;
      slice.id = {id.ns, fmt::format("{}-endpoints-{}", id.name, out.size())};
      slice.serviceName = id.name;
      slice.addressType = family;
      slice.ports = ports;
      out.push_back(std::move(slice));
    }
    return true;
  });
  if (!ok) return failed<Slices>(r);
  return succeeded(std::move(out));
}

// --- Node -------------------------------------------------------------------------------------

Decoded<NodeInfo> decodeNode(const nlohmann::json& obj) {
  // The taint the cluster autoscaler puts on a node it is about to remove, and the zone label
  // kube-proxy's topology reads (only the GA label: the beta failure-domain one is not read).
  static constexpr std::string_view kToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler";
  static constexpr std::string_view kZoneLabel = "topology.kubernetes.io/zone";
  NodeInfo node;
  node.name = objectName(obj).name;
  Reader r("Node " + (node.name.empty() ? std::string("<unnamed>") : node.name));
  const json* meta = nullptr;
  const json* spec = nullptr;
  std::string deletion;
  bool ok = checkEnvelope(r, obj, {"", node.name}) && r.labels(obj, node.labels) &&
            r.object(obj, "metadata", "", meta) &&
            r.string(*meta, "deletionTimestamp", "metadata", deletion) &&
            r.object(obj, "spec", "", spec) &&
            r.array(*spec, "taints", "spec", [&](const json& taint, const std::string& path) {
              if (!taint.is_object()) return r.fail(path, "must be an object");
              std::string key;
              if (!r.string(taint, "key", path, key)) return false;
              if (key == kToBeDeletedTaint) node.toBeDeleted = true;
              return true;
            });
  if (!ok) return failed<NodeInfo>(r);
  node.present = true;
  node.deletionPending = !deletion.empty();
  if (auto zone = node.labels.find(std::string(kZoneLabel)); zone != node.labels.end()) node.zone = zone->second;
  return succeeded(std::move(node));
}

}  // namespace sluice::kube
