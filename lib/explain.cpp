// explain(): the desired state planned into a FakeBackend, one packet traced through it.
#include "sluice/explain.h"

#include <algorithm>
#include <cctype>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sluice/dataplane.h"
#include "sluice/nft/backend.h"

namespace sluice {

Result<ExplainRequest> parseExplainRequest(const std::string& src, const std::string& dstPortProto) {
  ExplainRequest req;
  auto s = IPAddress::parse(src);
  if (!s) return Status(Code::kInvalidArgument, fmt::format("source \"{}\": not an IP address", src));
  req.src = *s;
  // DST:PORT/PROTO; the protocol is optional (TCP), an IPv6 DST is bracketed.
  std::string rest = dstPortProto;
  std::string proto = "TCP";
  if (size_t slash = rest.rfind('/'); slash != std::string::npos) {
    proto = rest.substr(slash + 1);
    rest.resize(slash);
  }
  std::transform(proto.begin(), proto.end(), proto.begin(), [](unsigned char c) { return std::toupper(c); });
  auto p = parseProtocol(proto);
  if (!p) return Status(Code::kInvalidArgument, fmt::format("\"{}\": protocol must be tcp, udp or sctp", dstPortProto));
  req.protocol = *p;
  size_t colon = rest.rfind(':');
  if (colon == std::string::npos || colon + 1 == rest.size())
    return Status(Code::kInvalidArgument, fmt::format("\"{}\": expected DST:PORT[/PROTO]", dstPortProto));
  std::string host = rest.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  auto d = IPAddress::parse(host);
  if (!d) return Status(Code::kInvalidArgument, fmt::format("\"{}\": \"{}\" is not an IP address", dstPortProto, host));
  req.dst = *d;
  const std::string portText = rest.substr(colon + 1);
  unsigned long port = 0;
  try {
    size_t used = 0;
    port = std::stoul(portText, &used);
    if (used != portText.size()) port = 0;
  } catch (...) {
    port = 0;
  }
  if (port == 0 || port > 65535)
    return Status(Code::kInvalidArgument, fmt::format("\"{}\": port must be 1..65535", dstPortProto));
  req.port = static_cast<uint16_t>(port);
  return req;
}

namespace {

// Which Service port the destination names, and through which frontend.
struct Match {
  const Service* svc = nullptr;
  const ServicePort* port = nullptr;
  std::string frontend;
};

Match findService(const Snapshot& snapshot, const ProxyConfig& cfg, const ExplainRequest& req) {
  const std::vector<IPAddress> nodePortIPs = cfg.nodePortIPs();
  const bool toNodePort = std::find(nodePortIPs.begin(), nodePortIPs.end(), req.dst) != nodePortIPs.end();
  for (const auto& [id, svc] : snapshot.services()) {
    for (const ServicePort& sp : svc.ports) {
      if (sp.protocol != req.protocol) continue;
      auto has = [&](const auto& list, auto addr) {
        return std::any_of(list.begin(), list.end(), [&](const auto& x) { return addr(x) == req.dst; });
      };
      auto self = [](const IPAddress& a) { return a; };
      if (sp.port == req.port) {
        if (has(svc.clusterIPs, self)) return {&svc, &sp, "ClusterIP"};
        if (has(svc.externalIPs, self)) return {&svc, &sp, "external IP"};
        if (has(svc.loadBalancerIngress, [](const LoadBalancerIngress& i) { return i.ip; }))
          return {&svc, &sp, "load-balancer IP"};
      }
      if (sp.nodePort != 0 && sp.nodePort == req.port && toNodePort) return {&svc, &sp, "NodePort"};
    }
  }
  return {};
}

std::string endpointState(const Endpoint& e) {
  std::string s = e.ready ? "ready" : (e.serving ? "serving" : "not serving");
  if (e.terminating) s += ", terminating";
  if (!e.nodeName.empty()) s += ", node " + e.nodeName;
  return s;
}

}  // namespace

Result<Explanation> explain(const Snapshot& snapshot, const ProxyConfig& cfg, const ExplainRequest& request) {
  if (request.src.family() != request.dst.family())
    return Status(Code::kInvalidArgument, "source and destination must be of one IP family");
  if (request.dst.family() != cfg.family)
    return Status(Code::kInvalidArgument,
                  fmt::format("{} is not of the explained family {}", request.dst.toString(), familyName(cfg.family)));
  // The same planner and DataPlane the daemon runs, into a fake: the rules are what the kernel
  // would hold for this state. sync() consumes the dirty set, hence the copy.
  nft::FakeBackend fake;
  DataPlane dp(cfg, fake);
  Snapshot copy = snapshot;
  DataPlane::SyncResult synced = dp.sync(copy);
  if (!synced.status) return synced.status.withContext("planning the desired state");

  nft::TracePacket packet;
  packet.protocol = request.protocol;
  packet.saddr = request.src;
  packet.daddr = request.dst;
  packet.dport = request.port;
  packet.entry = request.fromNode ? nft::Entry::kOutput : nft::Entry::kPrerouting;
  packet.iifname = request.fromNode ? "" : "eth0";
  packet.localAddresses = request.nodeAddresses;
  for (const IPAddress& a : cfg.nodeIPs)
    if (std::find(packet.localAddresses.begin(), packet.localAddresses.end(), a) == packet.localAddresses.end())
      packet.localAddresses.push_back(a);
  packet.daddrLocal = std::find(packet.localAddresses.begin(), packet.localAddresses.end(), request.dst) !=
                      packet.localAddresses.end();
  auto trace = nft::trace(fake, packet);
  if (!trace) return trace.status();

  Explanation ex;
  ex.request = request;
  ex.trace = std::move(trace).value();
  ex.disposition = ex.trace.disposition();
  Match m = findService(snapshot, cfg, request);
  std::vector<ResolvedEndpoint> endpoints;
  if (m.svc) {
    ex.service = m.svc->id;
    ex.servicePort = *m.port;
    ex.frontend = m.frontend;
    std::vector<Problem> ignored;
    endpoints = resolveEndpoints(*m.svc, *m.port, snapshot.slicesFor(m.svc->id), cfg, &ignored);
  }
  std::map<nft::NatTarget, double> byTarget;
  for (const nft::TraceOutcome& o : ex.trace.outcomes) {
    if (o.dnat) byTarget[*o.dnat] += o.probability;
    ex.masqueraded = ex.masqueraded || o.masqueraded();
    ex.fullyRandom = ex.fullyRandom || o.fullyRandom();
  }
  for (const auto& [target, probability] : byTarget) {
    ExplainCandidate c{target, probability, std::nullopt};
    if (m.svc) {
      for (const auto& [sid, slice] : snapshot.slicesFor(m.svc->id)) {
        for (const Endpoint& e : slice.endpoints)
          if (!e.addresses.empty() && e.addresses.front() == target.address) c.endpoint = e;
      }
    }
    ex.candidates.push_back(std::move(c));
  }
  std::sort(ex.candidates.begin(), ex.candidates.end(),
            [](const ExplainCandidate& a, const ExplainCandidate& b) { return a.probability > b.probability; });

  // Why: the rules say reject/drop; the state says what led the planner there.
  const bool rejected = ex.disposition == nft::Disposition::kRejected;
  const bool dropped = ex.disposition == nft::Disposition::kDropped;
  if (!m.svc) {
    ex.reason = "no Service holds this destination and port";
    if (dropped) ex.reason += "; it lies in the Service CIDR, so it is dropped instead of leaking to the default route";
  } else if (std::string skip = skipReason(*m.svc, cfg); !skip.empty()) {
    ex.reason = "the Service is not proxied: " + skip;
  } else if (rejected || dropped) {
    EndpointSets sets = categorizeEndpoints(endpoints);
    if (endpoints.empty()) {
      ex.reason = "the Service port has no endpoints";
    } else if (!sets.hasEndpoints) {
      ex.reason = fmt::format("none of the Service port's {} endpoints is ready or serving", endpoints.size());
    } else if (sets.local.empty() && (m.svc->internalTrafficPolicy == TrafficPolicy::kLocal ||
                                      m.svc->externalTrafficPolicy == TrafficPolicy::kLocal)) {
      ex.reason = "traffic policy Local and no usable endpoint on this node";
    } else if (!m.svc->loadBalancerSourceRanges.empty() && m.frontend == "load-balancer IP") {
      ex.reason = "the source is outside the Service's loadBalancerSourceRanges";
    } else {
      ex.reason = "the rules decide so (see the trace)";
    }
  }
  return ex;
}

std::string Explanation::toString() const {
  std::string out;
  out += fmt::format("packet: {} {} -> {}:{}\n", protocolName(request.protocol), request.src.toString(),
                     request.dst.toString(), request.port);
  if (service) {
    out += fmt::format("service: {} port {}{}/{} via {}\n", service->toString(),
                       servicePort->name.empty() ? "" : servicePort->name + " ", servicePort->port,
                       protocolName(servicePort->protocol), frontend);
  } else {
    out += "service: none\n";
  }
  out += fmt::format("verdict: {}\n", disposition ? nft::dispositionName(*disposition) : "depends on the random draw");
  if (!candidates.empty()) {
    out += "endpoints:\n";
    for (const ExplainCandidate& c : candidates)
      out += fmt::format("  {}  p={:.3f}{}\n", c.target.toString(), c.probability,
                         c.endpoint ? "  (" + endpointState(*c.endpoint) + ")" : "");
  }
  out += fmt::format("masquerade: {}\n", masqueraded ? (fullyRandom ? "yes, fully-random" : "yes") : "no");
  if (!reason.empty()) out += "why: " + reason + "\n";
  out += "\n" + trace.toString();
  return out;
}

std::string Explanation::toJson() const {
  nlohmann::json j;
  j["packet"] = {{"protocol", protocolName(request.protocol)},
                 {"src", request.src.toString()},
                 {"dst", request.dst.toString()},
                 {"port", request.port}};
  if (service) {
    j["service"] = {{"name", service->toString()},
                    {"port", servicePort->port},
                    {"portName", servicePort->name},
                    {"frontend", frontend}};
  } else {
    j["service"] = nullptr;
  }
  j["verdict"] = disposition ? nft::dispositionName(*disposition) : "mixed";
  j["endpoints"] = nlohmann::json::array();
  for (const ExplainCandidate& c : candidates) {
    nlohmann::json e = {{"target", c.target.toString()}, {"probability", c.probability}};
    if (c.endpoint) e["state"] = endpointState(*c.endpoint);
    j["endpoints"].push_back(std::move(e));
  }
  j["masquerade"] = masqueraded;
  j["fullyRandom"] = fullyRandom;
  j["reason"] = reason;
  j["outcomes"] = nlohmann::json::array();
  for (const nft::TraceOutcome& o : trace.outcomes) {
    nlohmann::json steps = nlohmann::json::array();
    for (const nft::TraceStep& s : o.steps) steps.push_back(s.toString());
    j["outcomes"].push_back({{"summary", o.summary()}, {"probability", o.probability}, {"rules", steps}});
  }
  return j.dump(2);
}

}  // namespace sluice
