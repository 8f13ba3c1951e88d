#include "lease_json.h"

namespace sluice::leasejson {

using json = nlohmann::json;

int64_t wallMillis(Clock::WallTime t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

Clock::WallTime fromWallMillis(int64_t ms) { return Clock::WallTime(std::chrono::milliseconds(ms)); }

json encode(const LeaseSpec& spec, uint64_t generation, Clock::WallTime renewTime) {
  json ports = json::array();
  for (const EndpointPort& p : spec.ports)
    ports.push_back({{"name", p.name}, {"protocol", protocolName(p.protocol)}, {"port", p.port}});
  return json{{"identity", spec.identity},
              {"address", spec.address.toString()},
              {"ports", ports},
              {"nodeName", spec.nodeName},
              {"zone", spec.zone},
              {"ttlMs", spec.ttl.count()},
              {"generation", generation},
              {"renewTimeMs", wallMillis(renewTime)}};
}

Result<LeaseRecord> decode(const json& j, Problem& problem) {
  auto fail = [&](const char* field, std::string reason) {
    problem.field = field;
    problem.reason = std::move(reason);
    return Status(Code::kInvalidArgument, problem.toString());
  };
  if (!j.is_object()) return fail("value", "not a JSON object");
  try {
    LeaseRecord r;
    r.spec.identity = j.value("identity", "");
    auto addr = IPAddress::parse(j.value("address", ""));
    if (!addr) return fail("address", addr.status().message());
    r.spec.address = *addr;
    const json ports = j.value("ports", json::array());
    for (size_t i = 0; i < ports.size(); ++i) {
      auto proto = parseProtocol(ports[i].value("protocol", "TCP"));
      if (!proto) return fail("ports", "[" + std::to_string(i) + "].protocol: " + proto.status().message());
      r.spec.ports.push_back({ports[i].value("name", ""), *proto, ports[i].value<uint16_t>("port", 0)});
    }
    r.spec.nodeName = j.value("nodeName", "");
    r.spec.zone = j.value("zone", "");
    r.spec.ttl = std::chrono::milliseconds(j.value<int64_t>("ttlMs", 0));
    r.generation = j.value<uint64_t>("generation", 0);
    r.renewTime = fromWallMillis(j.value<int64_t>("renewTimeMs", 0));
    if (Status s = validateLeaseSpec(r.spec); !s) return fail("value", s.message());
    return r;
  } catch (const json::exception& e) {
    return fail("value", e.what());
  }
}

}  // namespace sluice::leasejson
