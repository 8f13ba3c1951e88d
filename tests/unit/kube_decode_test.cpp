#include <doctest/doctest.h>

#include "builders.h"
#include "fixtures.h"
#include "kube_decode.h"

using namespace sluice;
using namespace sluice::kube;
using sluice::testing::fixtureJson;
using sluice::testing::fixtureLines;
using sluice::testing::ip;
using json = nlohmann::json;

namespace {

Service mustService(const json& obj) {
  auto d = decodeService(obj);
  INFO((d.error ? d.error->toString() : std::string("ok")));
  REQUIRE(d);
  return *d.value;
}

EndpointSlice mustSlice(const json& obj) {
  auto d = decodeEndpointSlice(obj);
  INFO((d.error ? d.error->toString() : std::string("ok")));
  REQUIRE(d);
  return *d.value;
}

Problem serviceError(const json& obj) {
  auto d = decodeService(obj);
  REQUIRE_FALSE(d);
  REQUIRE(d.error);
  return *d.error;
}

Problem sliceError(const json& obj) {
  auto d = decodeEndpointSlice(obj);
  REQUIRE_FALSE(d);
  REQUIRE(d.error);
  return *d.error;
}

json minimalService() {
  return json::parse(R"({"kind":"Service","metadata":{"name":"web","namespace":"shop"},
    "spec":{"clusterIP":"198.18.0.10","ports":[{"port":80}]}})");
}

json minimalSlice() {
  return json::parse(R"({"kind":"EndpointSlice","metadata":{"name":"web-1","namespace":"shop",
    "labels":{"kubernetes.io/service-name":"web"}},"addressType":"IPv4",
    "endpoints":[{"addresses":["198.18.1.1"]}],"ports":[{"port":8080}]})");
}

}  // namespace

TEST_CASE("kube decode: objectName defaults the namespace") {
  CHECK(objectName(json::parse(R"({"metadata":{"name":"a"}})")) == ObjectName{"default", "a"});
  CHECK(objectName(json::parse(R"({"metadata":{"name":"a","namespace":"x"}})")) == ObjectName{"x", "a"});
  CHECK(objectName(json::parse(R"({"metadata":{"name":"a","namespace":""}})")) == ObjectName{"default", "a"});
  CHECK(objectName(json::parse("[]")) == ObjectName{"default", ""});
}

TEST_CASE("kube decode: captured Services") {
  SUBCASE("TKE 2023: clusterIPs, ipFamilies, UDP and TCP on one port number") {
    Service s = mustService(fixtureJson("k8s/captured/service.tke-2023.edge-kube-dns.json"));
    CHECK(s.id == ObjectName{"edge-system", "edge-kube-dns"});
    CHECK(s.type == ServiceType::kClusterIP);
    CHECK(s.clusterIPs == std::vector<IPAddress>{ip("172.24.253.228")});
    REQUIRE(s.ports.size() == 3);
    CHECK(s.ports[0] == ServicePort{"dns", Protocol::kUDP, 53, 0});
    CHECK(s.ports[1] == ServicePort{"dns-tcp", Protocol::kTCP, 53, 0});
    CHECK(s.ports[2] == ServicePort{"metrics", Protocol::kTCP, 9153, 0});
    CHECK(s.internalTrafficPolicy == TrafficPolicy::kCluster);
    CHECK(s.sessionAffinity == SessionAffinity::kNone);
    CHECK(s.labels.at("k8s-app") == "edge-kube-dns");
    CHECK(s.labels.size() == 4);
    CHECK(s.loadBalancerIngress.empty());
  }
  SUBCASE("kubectl -o json (sorted keys), named targetPort, only clusterIP") {
    Service s = mustService(fixtureJson("k8s/captured/service.gke-2019.kubectl-o-json.json"));
    CHECK(s.id == ObjectName{"default", "dictionary1"});
    CHECK(s.clusterIPs == std::vector<IPAddress>{ip("10.47.248.116")});
    CHECK(s.ports == std::vector<ServicePort>{{"http", Protocol::kTCP, 4001, 0}});
    CHECK(s.affinityTimeoutSeconds == 10800);
  }
  SUBCASE("ServiceList item without kind (pre-1.20: no clusterIPs)") {
    auto list = fixtureJson("k8s/captured/servicelist.minikube-2020.json");
    Service s = mustService(list["items"][0]);
    CHECK(s.id == ObjectName{"kube-system", "kube-dns"});
    CHECK(s.clusterIPs == std::vector<IPAddress>{ip("10.96.0.10")});
    CHECK(s.ports.size() == 3);
  }
}

TEST_CASE("kube decode: LoadBalancer Service with every proxy field") {
  Service s = mustService(fixtureJson("k8s/synthesized/service.loadbalancer-all-proxy-fields.json"));
  CHECK(s.id == ObjectName{"shop", "web"});
  CHECK(s.type == ServiceType::kLoadBalancer);
  CHECK(s.clusterIPs == std::vector<IPAddress>{ip("10.96.12.34"), ip("fd00:10:96::1234")});
  CHECK(s.ports == std::vector<ServicePort>{{"http", Protocol::kTCP, 80, 31080},
                                            {"dns", Protocol::kUDP, 53, 31053}});
  CHECK(s.externalIPs == std::vector<IPAddress>{ip("192.0.2.10")});
  CHECK(s.loadBalancerSourceRanges == std::vector<IPPrefix>{IPPrefix::parse("203.0.113.0/24").value()});
  CHECK(s.externalTrafficPolicy == TrafficPolicy::kLocal);
  CHECK(s.internalTrafficPolicy == TrafficPolicy::kCluster);
  CHECK(s.healthCheckNodePort == 32000);
  CHECK(s.sessionAffinity == SessionAffinity::kClientIP);
  CHECK(s.affinityTimeoutSeconds == 10800);
  CHECK(s.trafficDistribution == "PreferClose");
  // The hostname-only ingress (ipMode Proxy) carries no IP: nothing for the node.
  REQUIRE(s.loadBalancerIngress.size() == 1);
  CHECK(s.loadBalancerIngress[0] == LoadBalancerIngress{ip("198.51.100.7"), false});
  CHECK(s.labels == std::map<std::string, std::string>{{"app", "web"}});
}

// The all-fields fixture holds placeholder strings where enumerations and IPs belong. Each
// step repairs the field the previous error named; the next error must name the next field,
// which proves every used field is read and checked, and the repaired object keeps them all.
TEST_CASE("kube decode: all-fields Service is checked field by field") {
  json obj = fixtureJson("k8s/all-fields/core.v1.Service.json");
  struct Step {
    const char* field;
    std::function<void(json&)> repair;
  };
  std::vector<Step> steps = {
      {"spec.type", [](json& o) { o["spec"]["type"] = "LoadBalancer"; }},
      {"spec.clusterIPs[0]",
       [](json& o) {
         o["spec"]["clusterIP"] = "198.18.0.10";
         o["spec"]["clusterIPs"] = {"198.18.0.10"};
       }},
      {"spec.ipFamilies[0]", [](json& o) { o["spec"]["ipFamilies"] = {"IPv4"}; }},
      {"spec.ports[0].protocol", [](json& o) { o["spec"]["ports"][0]["protocol"] = "UDP"; }},
      {"spec.externalIPs[0]", [](json& o) { o["spec"]["externalIPs"] = {"203.0.113.5"}; }},
      {"spec.loadBalancerSourceRanges[0]",
       [](json& o) { o["spec"]["loadBalancerSourceRanges"] = {"198.51.100.0/24"}; }},
      {"spec.externalTrafficPolicy", [](json& o) { o["spec"]["externalTrafficPolicy"] = "Local"; }},
      {"spec.internalTrafficPolicy", [](json& o) { o["spec"]["internalTrafficPolicy"] = "Local"; }},
      {"spec.sessionAffinity", [](json& o) { o["spec"]["sessionAffinity"] = "ClientIP"; }},
      {"status.loadBalancer.ingress[0].ip",
       [](json& o) { o["status"]["loadBalancer"]["ingress"][0]["ip"] = "203.0.113.9"; }},
  };
  for (const auto& step : steps) {
    CAPTURE(step.field);
    Problem p = serviceError(obj);
    CHECK(p.object == "Service namespaceValue/nameValue");
    CHECK(p.field == step.field);
    CHECK_FALSE(p.reason.empty());
    step.repair(obj);
  }
  Service s = mustService(obj);
  CHECK(s.id == ObjectName{"namespaceValue", "nameValue"});
  CHECK(s.type == ServiceType::kLoadBalancer);
  CHECK(s.clusterIPs == std::vector<IPAddress>{ip("198.18.0.10")});
  CHECK(s.ports == std::vector<ServicePort>{{"nameValue", Protocol::kUDP, 3, 5}});
  CHECK(s.externalIPs == std::vector<IPAddress>{ip("203.0.113.5")});
  CHECK(s.loadBalancerSourceRanges.size() == 1);
  CHECK(s.externalTrafficPolicy == TrafficPolicy::kLocal);
  CHECK(s.internalTrafficPolicy == TrafficPolicy::kLocal);
  CHECK(s.sessionAffinity == SessionAffinity::kClientIP);
  CHECK(s.affinityTimeoutSeconds == 1);
  CHECK(s.healthCheckNodePort == 12);
  CHECK(s.trafficDistribution == "");  // unknown value: no preference, as kube-proxy reads it
  // ipMode "ipModeValue" is not VIP: not intercepted, as kube-proxy reads it.
  CHECK(s.loadBalancerIngress == std::vector<LoadBalancerIngress>{{ip("203.0.113.9"), true}});
  CHECK(s.labels == std::map<std::string, std::string>{{"labelsKey", "labelsValue"}});
}

TEST_CASE("kube decode: Service defaults and cluster IP forms") {
  SUBCASE("defaults") {
    json o = json::parse(R"({"metadata":{"name":"a"},"spec":{"clusterIP":"198.18.0.1","ports":[{"port":80}]}})");
    Service s = mustService(o);
    CHECK(s.id == ObjectName{"default", "a"});
    CHECK(s.type == ServiceType::kClusterIP);
    CHECK(s.ports == std::vector<ServicePort>{{"", Protocol::kTCP, 80, 0}});
    CHECK(s.externalTrafficPolicy == TrafficPolicy::kCluster);
    CHECK(s.sessionAffinity == SessionAffinity::kNone);
    CHECK(s.affinityTimeoutSeconds == 10800);
    CHECK(s.healthCheckNodePort == 0);
  }
  SUBCASE("headless and unallocated leave no cluster IP") {
    for (const char* spec : {R"({"clusterIP":"None"})", R"({"clusterIP":"None","clusterIPs":["None"]})",
                             R"({"clusterIPs":["None"]})", R"({"clusterIP":""})", R"({})", "null"}) {
      CAPTURE(spec);
      json o = {{"metadata", {{"name", "h"}}}, {"spec", json::parse(spec)}};
      CHECK(mustService(o).clusterIPs.empty());
    }
  }
  SUBCASE("null fields read as absent") {
    json o = json::parse(R"({"metadata":{"name":"a","labels":null},"spec":{"clusterIP":"198.18.0.1",
      "ports":[{"port":80,"name":null,"protocol":null,"nodePort":null}],"externalIPs":null,
      "sessionAffinityConfig":null},"status":null})");
    Service s = mustService(o);
    CHECK(s.ports == std::vector<ServicePort>{{"", Protocol::kTCP, 80, 0}});
  }
  SUBCASE("dual-stack, IPv6 primary") {
    json o = json::parse(R"({"metadata":{"name":"a"},"spec":{"clusterIP":"fd00::10",
      "clusterIPs":["fd00::10","198.18.0.10"],"ipFamilies":["IPv6","IPv4"]}})");
    CHECK(mustService(o).clusterIPs == std::vector<IPAddress>{ip("fd00::10"), ip("198.18.0.10")});
  }
  SUBCASE("legacy externalTrafficPolicy spellings") {
    json o = minimalService();
    o["spec"]["type"] = "NodePort";
    o["spec"]["externalTrafficPolicy"] = "OnlyLocal";
    CHECK(mustService(o).externalTrafficPolicy == TrafficPolicy::kLocal);
    o["spec"]["externalTrafficPolicy"] = "Global";
    CHECK(mustService(o).externalTrafficPolicy == TrafficPolicy::kCluster);
  }
  SUBCASE("source ranges are trimmed and masked") {
    json o = minimalService();
    o["spec"]["loadBalancerSourceRanges"] = {" 203.0.113.7/24 "};
    CHECK(mustService(o).loadBalancerSourceRanges[0].toString() == "203.0.113.0/24");
  }
  SUBCASE("VIP ingress and an absent ipMode are intercepted") {
    json o = minimalService();
    o["status"]["loadBalancer"]["ingress"] = json::parse(
        R"([{"ip":"203.0.113.1"},{"ip":"203.0.113.2","ipMode":"VIP"},{"ip":"203.0.113.3","ipMode":"Proxy"}])");
    auto ing = mustService(o).loadBalancerIngress;
    REQUIRE(ing.size() == 3);
    CHECK_FALSE(ing[0].proxyMode);
    CHECK_FALSE(ing[1].proxyMode);
    CHECK(ing[2].proxyMode);
  }
  SUBCASE("trafficDistribution values") {
    json o = minimalService();
    for (const char* v : {"PreferClose", "PreferSameZone", "PreferSameNode"}) {
      o["spec"]["trafficDistribution"] = v;
      CHECK(mustService(o).trafficDistribution == v);
    }
  }
}

TEST_CASE("kube decode: bad Services name the object and the field") {
  struct Case {
    const char* what;
    std::function<void(json&)> mutate;
    const char* field;
  };
  std::vector<Case> cases = {
      {"not an object", [](json& o) { o = json::array(); }, ""},
      {"no name", [](json& o) { o["metadata"].erase("name"); }, "metadata.name"},
      {"name not a string", [](json& o) { o["metadata"]["name"] = 5; }, "metadata.name"},
      {"label not a string", [](json& o) { o["metadata"]["labels"]["x"] = 1; }, "metadata.labels.x"},
      {"spec not an object", [](json& o) { o["spec"] = "x"; }, "spec"},
      {"port as string", [](json& o) { o["spec"]["ports"][0]["port"] = "80"; }, "spec.ports[0].port"},
      {"port as float", [](json& o) { o["spec"]["ports"][0]["port"] = 80.5; }, "spec.ports[0].port"},
      {"port 0", [](json& o) { o["spec"]["ports"][0]["port"] = 0; }, "spec.ports[0].port"},
      {"port too big", [](json& o) { o["spec"]["ports"][0]["port"] = 65536; }, "spec.ports[0].port"},
      {"port huge", [](json& o) { o["spec"]["ports"][0]["port"] = 18446744073709551615ull; }, "spec.ports[0].port"},
      {"port missing", [](json& o) { o["spec"]["ports"][0].erase("port"); }, "spec.ports[0].port"},
      {"ports not a list", [](json& o) { o["spec"]["ports"] = json::object(); }, "spec.ports"},
      {"port not an object", [](json& o) { o["spec"]["ports"][0] = 80; }, "spec.ports[0]"},
      {"protocol", [](json& o) { o["spec"]["ports"][0]["protocol"] = "ICMP"; }, "spec.ports[0].protocol"},
      {"nodePort on ClusterIP", [](json& o) { o["spec"]["ports"][0]["nodePort"] = 30080; }, "spec.ports[0].nodePort"},
      {"unnamed second port",
       [](json& o) { o["spec"]["ports"] = json::parse(R"([{"name":"a","port":80},{"port":81}])"); },
       "spec.ports[1].name"},
      {"duplicate port name",
       [](json& o) { o["spec"]["ports"] = json::parse(R"([{"name":"a","port":80},{"name":"a","port":81}])"); },
       "spec.ports[1].name"},
      {"duplicate port/protocol",
       [](json& o) { o["spec"]["ports"] = json::parse(R"([{"name":"a","port":80},{"name":"b","port":80}])"); },
       "spec.ports[1]"},
      {"type", [](json& o) { o["spec"]["type"] = "Cluster"; }, "spec.type"},
      {"clusterIP garbage", [](json& o) { o["spec"]["clusterIP"] = "10.0.0.300"; }, "spec.clusterIP"},
      {"clusterIPs disagree", [](json& o) { o["spec"]["clusterIPs"] = {"198.18.0.11"}; }, "spec.clusterIPs[0]"},
      {"two IPv4 cluster IPs",
       [](json& o) { o["spec"]["clusterIPs"] = {"198.18.0.10", "198.18.0.11"}; }, "spec.clusterIPs[1]"},
      {"three cluster IPs",
       [](json& o) { o["spec"]["clusterIPs"] = {"198.18.0.10", "fd00::1", "fd00::2"}; }, "spec.clusterIPs"},
      {"None with another", [](json& o) {
         o["spec"]["clusterIP"] = "None";
         o["spec"]["clusterIPs"] = {"None", "fd00::1"};
       }, "spec.clusterIPs[0]"},
      {"family mismatch", [](json& o) { o["spec"]["ipFamilies"] = {"IPv6"}; }, "spec.ipFamilies[0]"},
      {"duplicate family", [](json& o) { o["spec"]["ipFamilies"] = {"IPv4", "IPv4"}; }, "spec.ipFamilies[1]"},
      {"externalIP", [](json& o) { o["spec"]["externalIPs"] = {"example.com"}; }, "spec.externalIPs[0]"},
      {"source range without bits",
       [](json& o) { o["spec"]["loadBalancerSourceRanges"] = {"203.0.113.1"}; }, "spec.loadBalancerSourceRanges[0]"},
      {"ETP", [](json& o) { o["spec"]["externalTrafficPolicy"] = "local"; }, "spec.externalTrafficPolicy"},
      {"ITP alias is not accepted", [](json& o) { o["spec"]["internalTrafficPolicy"] = "OnlyLocal"; },
       "spec.internalTrafficPolicy"},
      {"affinity", [](json& o) { o["spec"]["sessionAffinity"] = "Cookie"; }, "spec.sessionAffinity"},
      {"affinity timeout 0",
       [](json& o) { o["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] = 0; },
       "spec.sessionAffinityConfig.clientIP.timeoutSeconds"},
      {"affinity timeout > 1 day",
       [](json& o) { o["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] = 86401; },
       "spec.sessionAffinityConfig.clientIP.timeoutSeconds"},
      {"healthCheckNodePort", [](json& o) { o["spec"]["healthCheckNodePort"] = -1; }, "spec.healthCheckNodePort"},
      {"ingress IP", [](json& o) { o["status"]["loadBalancer"]["ingress"] = {{{"ip", "lb"}}}; },
       "status.loadBalancer.ingress[0].ip"},
      {"ingress not a list", [](json& o) { o["status"]["loadBalancer"]["ingress"] = "x"; },
       "status.loadBalancer.ingress"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    json o = minimalService();
    c.mutate(o);
    Problem p = serviceError(o);
    CHECK(p.field == c.field);
    CHECK_FALSE(p.reason.empty());
    if (std::string(c.what) != "not an object" && std::string(c.what).rfind("name", 0) != 0 &&
        std::string(c.what) != "no name")
      CHECK(p.object == "Service shop/web");
  }
  // The Problem reads as one line naming everything.
  json o = minimalService();
  o["spec"]["ports"][0]["port"] = 70000;
  CHECK(serviceError(o).toString() == "Service shop/web spec.ports[0].port: 70000 is out of range [1, 65535]");
  o = minimalService();
  o["metadata"].erase("name");
  CHECK(serviceError(o).object == "Service shop/<unnamed>");
}

TEST_CASE("kube decode: captured and synthesized EndpointSlices") {
  SUBCASE("TKE watch object") {
    EndpointSlice s = mustSlice(fixtureJson("k8s/captured/endpointslice.tke-2023.json"));
    CHECK(s.id == ObjectName{"kube-system", "externalnode-proxy-l28pc"});
    CHECK(s.serviceName == "externalnode-proxy");
    CHECK(s.addressType == IPFamily::kV4);
    CHECK(s.ports == std::vector<EndpointPort>{{"tcp-80", Protocol::kTCP, 80}, {"tcp-443", Protocol::kTCP, 443}});
    REQUIRE(s.endpoints.size() == 1);
    const Endpoint& e = s.endpoints[0];
    CHECK(e.addresses == std::vector<IPAddress>{ip("172.24.0.7")});
    CHECK(e.ready);
    CHECK(e.serving);
    CHECK_FALSE(e.terminating);
    CHECK(e.nodeName == "10.0.0.29");
    CHECK(e.zone == "540001");
    CHECK(e.weight == 1);
  }
  SUBCASE("kind list: only ready set (serving defaults to true), v1beta1 topology ignored") {
    auto list = fixtureJson("k8s/captured/endpointslicelist.kind-2020.json");
    EndpointSlice api = mustSlice(list["items"][0]);
    CHECK(api.id == ObjectName{"default", "kubernetes"});
    CHECK(api.serviceName == "kubernetes");
    CHECK(api.ports == std::vector<EndpointPort>{{"https", Protocol::kTCP, 6443}});
    EndpointSlice dns = mustSlice(list["items"][1]);
    CHECK(dns.ports == std::vector<EndpointPort>{{"metrics", Protocol::kTCP, 9153}, {"dns", Protocol::kUDP, 53}});
    REQUIRE(dns.endpoints.size() == 1);
    CHECK(dns.endpoints[0].ready);
    CHECK(dns.endpoints[0].serving);
    CHECK_FALSE(dns.endpoints[0].terminating);
    CHECK(dns.endpoints[0].nodeName.empty());
  }
  SUBCASE("IPv6 with hints and empty conditions") {
    EndpointSlice s = mustSlice(fixtureJson("k8s/synthesized/endpointslice.ipv6-hints.json"));
    CHECK(s.addressType == IPFamily::kV6);
    CHECK(s.serviceName == "web");
    REQUIRE(s.endpoints.size() == 2);
    CHECK(s.endpoints[0].hints.zones() == std::vector<std::string>{"zone-1"});
    CHECK(s.endpoints[0].hints.nodes() == std::vector<std::string>{"node-a"});
    CHECK(s.endpoints[1].addresses == std::vector<IPAddress>{ip("fd00:10:244:2::9")});
    CHECK(s.endpoints[1].ready);  // conditions {}: nil ⇒ ready, serving, not terminating
    CHECK(s.endpoints[1].serving);
    CHECK_FALSE(s.endpoints[1].terminating);
    CHECK(s.endpoints[1].hints.zones() == std::vector<std::string>{"zone-2"});
    CHECK(s.endpoints[1].hints.nodes().empty());
    CHECK(s.ports[1] == EndpointPort{"dns", Protocol::kUDP, 5353});
  }
  SUBCASE("GKE terminating endpoint") {
    json slice = minimalSlice();
    slice["endpoints"] = fixtureJson("k8s/captured/endpointslice.gke-terminating.endpoints-fragment.json");
    EndpointSlice s = mustSlice(slice);
    REQUIRE(s.endpoints.size() == 2);
    CHECK_FALSE(s.endpoints[0].ready);
    CHECK(s.endpoints[0].serving);
    CHECK(s.endpoints[0].terminating);
    CHECK(s.endpoints[0].zone == "us-central1-c");
    CHECK(s.endpoints[1].ready);
  }
  SUBCASE("lease reconciler's default/kubernetes slice") {
    EndpointSlice s = mustSlice(fixtureJson("k8s/synthesized/endpointslice.default-kubernetes.json"));
    CHECK(s.endpoints.size() == 2);
    CHECK(s.serviceName == "kubernetes");
  }
  SUBCASE("watch stream objects, DELETED with endpoints:null") {
    auto lines = fixtureLines("k8s/synthesized/watch.endpointslices.stream.jsonl");
    EndpointSlice modified = mustSlice(lines[1]["object"]);
    CHECK(modified.endpoints.size() == 2);
    CHECK(modified.endpoints[0].terminating);
    EndpointSlice deleted = mustSlice(lines[3]["object"]);
    CHECK(deleted.endpoints.empty());
    CHECK(deleted.id == ObjectName{"shop", "web-abc12"});
  }
}

TEST_CASE("kube decode: all-fields EndpointSlice is checked field by field") {
  json obj = fixtureJson("k8s/all-fields/discovery.k8s.io.v1.EndpointSlice.json");
  std::vector<std::pair<const char*, std::function<void(json&)>>> steps = {
      {"addressType", [](json& o) { o["addressType"] = "IPv4"; }},
      {"metadata.labels.kubernetes.io/service-name",
       [](json& o) { o["metadata"]["labels"]["kubernetes.io/service-name"] = "svc"; }},
      {"ports[0].protocol", [](json& o) { o["ports"][0]["protocol"] = "SCTP"; }},
      {"endpoints[0].addresses[0]", [](json& o) { o["endpoints"][0]["addresses"][0] = "198.18.1.1"; }},
  };
  for (const auto& [field, repair] : steps) {
    CAPTURE(field);
    Problem p = sliceError(obj);
    CHECK(p.object == "EndpointSlice namespaceValue/nameValue");
    CHECK(p.field == field);
    repair(obj);
  }
  EndpointSlice s = mustSlice(obj);
  CHECK(s.serviceName == "svc");
  CHECK(s.ports == std::vector<EndpointPort>{{"nameValue", Protocol::kSCTP, 3}});
  REQUIRE(s.endpoints.size() == 1);
  const Endpoint& e = s.endpoints[0];
  CHECK(e.ready);
  CHECK(e.serving);
  CHECK(e.terminating);
  CHECK(e.nodeName == "nodeNameValue");
  CHECK(e.zone == "zoneValue");
  CHECK(e.hints.zones() == std::vector<std::string>{"nameValue"});
  CHECK(e.hints.nodes() == std::vector<std::string>{"nameValue"});
}

TEST_CASE("kube decode: EndpointSlice port and condition edge cases") {
  SUBCASE("nil/zero port ignored, nil name is empty, nil lists are empty") {
    json o = minimalSlice();
    o["ports"] = json::parse(R"([{"name":null,"port":8080},{"name":"all"},{"name":"zero","port":0},{"port":null}])");
    EndpointSlice s = mustSlice(o);
    CHECK(s.ports == std::vector<EndpointPort>{{"", Protocol::kTCP, 8080}});
    o["ports"] = nullptr;
    o["endpoints"] = nullptr;
    s = mustSlice(o);
    CHECK(s.ports.empty());
    CHECK(s.endpoints.empty());
  }
  SUBCASE("explicit false conditions") {
    json o = minimalSlice();
    o["endpoints"][0]["conditions"] = json::parse(R"({"ready":false,"serving":false,"terminating":true})");
    EndpointSlice s = mustSlice(o);
    CHECK_FALSE(s.endpoints[0].ready);
    CHECK_FALSE(s.endpoints[0].serving);
    CHECK(s.endpoints[0].terminating);
  }
  SUBCASE("an endpoint without addresses is kept for the planner to skip") {
    json o = minimalSlice();
    o["endpoints"][0]["addresses"] = json::array();
    CHECK(mustSlice(o).endpoints[0].addresses.empty());
  }
}

TEST_CASE("kube decode: bad EndpointSlices name the object and the field") {
  struct Case {
    const char* what;
    std::function<void(json&)> mutate;
    const char* field;
    const char* reason;  // substring, or ""
  };
  std::vector<Case> cases = {
      {"FQDN", [](json& o) { o["addressType"] = "FQDN"; }, "addressType", "FQDN slices are not proxied"},
      {"no addressType", [](json& o) { o.erase("addressType"); }, "addressType", "required"},
      {"unknown addressType", [](json& o) { o["addressType"] = "IPX"; }, "addressType", "IPX"},
      {"no service label", [](json& o) { o["metadata"]["labels"] = json::object(); },
       "metadata.labels.kubernetes.io/service-name", "no Service"},
      {"v6 address in v4 slice", [](json& o) { o["endpoints"][0]["addresses"][0] = "fd00::1"; },
       "endpoints[0].addresses[0]", "IPv6 address"},
      {"garbage address", [](json& o) { o["endpoints"][0]["addresses"][0] = "pod-a"; },
       "endpoints[0].addresses[0]", "pod-a"},
      {"address not a string", [](json& o) { o["endpoints"][0]["addresses"][0] = 1; },
       "endpoints[0].addresses[0]", ""},
      {"ready as string", [](json& o) { o["endpoints"][0]["conditions"]["ready"] = "true"; },
       "endpoints[0].conditions.ready", ""},
      {"conditions not an object", [](json& o) { o["endpoints"][0]["conditions"] = true; },
       "endpoints[0].conditions", ""},
      {"zone not a string", [](json& o) { o["endpoints"][0]["zone"] = 3; }, "endpoints[0].zone", ""},
      {"hint without object", [](json& o) { o["endpoints"][0]["hints"]["forZones"] = {"z"}; },
       "endpoints[0].hints.forZones[0]", ""},
      {"negative port", [](json& o) { o["ports"][0]["port"] = -1; }, "ports[0].port", "out of range"},
      {"endpoints not a list", [](json& o) { o["endpoints"] = json::object(); }, "endpoints", ""},
      {"protocol", [](json& o) { o["ports"][0]["protocol"] = "tcp"; }, "ports[0].protocol", "tcp"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    json o = minimalSlice();
    c.mutate(o);
    Problem p = sliceError(o);
    CHECK(p.object == "EndpointSlice shop/web-1");
    CHECK(p.field == c.field);
    CHECK(p.reason.find(c.reason) != std::string::npos);
  }
}

TEST_CASE("kube decode: legacy Endpoints become one slice per subset and family") {
  SUBCASE("captured list item") {
    auto list = fixtureJson("k8s/captured/endpointslist.2020.json");
    auto d = decodeEndpoints(list["items"][0]);
    REQUIRE(d);
    REQUIRE(d.value->size() == 1);
    const EndpointSlice& s = d.value->front();
    CHECK(s.id == ObjectName{"default", "kubernetes-endpoints-0"});
    CHECK(s.serviceName == "kubernetes");
    CHECK(s.addressType == IPFamily::kV4);
    CHECK(s.ports == std::vector<EndpointPort>{{"https", Protocol::kTCP, 8443}});
    REQUIRE(s.endpoints.size() == 1);
    CHECK(s.endpoints[0].addresses == std::vector<IPAddress>{ip("172.17.0.2")});
    CHECK(s.endpoints[0].nodeName == "foobar");
    CHECK(s.endpoints[0].ready);
  }
  SUBCASE("lease reconciler's default/kubernetes") {
    auto d = decodeEndpoints(fixtureJson("k8s/synthesized/endpoints.default-kubernetes.json"));
    REQUIRE(d);
    REQUIRE(d.value->size() == 1);
    CHECK(d.value->front().endpoints.size() == 2);
  }
  SUBCASE("mixed families, not-ready addresses, several subsets") {
    json o = json::parse(R"({"metadata":{"name":"db","namespace":"x"},"subsets":[
      {"addresses":[{"ip":"198.18.1.1","nodeName":"n1"},{"ip":"fd00::1"}],
       "notReadyAddresses":[{"ip":"198.18.1.2"}],"ports":[{"port":5432}]},
      {"addresses":[{"ip":"198.18.1.3"}],"ports":[{"name":"m","port":9000,"protocol":"UDP"}]},
      {"ports":[{"port":1}]}]})");
    auto d = decodeEndpoints(o);
    REQUIRE(d);
    auto& slices = *d.value;
    REQUIRE(slices.size() == 3);
    CHECK(slices[0].id.name == "db-endpoints-0");
    CHECK(slices[0].addressType == IPFamily::kV4);
    REQUIRE(slices[0].endpoints.size() == 2);
    CHECK(slices[0].endpoints[0].nodeName == "n1");
    CHECK(slices[0].endpoints[1].addresses[0] == ip("198.18.1.2"));
    CHECK_FALSE(slices[0].endpoints[1].ready);
    CHECK_FALSE(slices[0].endpoints[1].serving);
    CHECK_FALSE(slices[0].endpoints[1].terminating);
    CHECK(slices[1].id.name == "db-endpoints-1");
    CHECK(slices[1].addressType == IPFamily::kV6);
    CHECK(slices[1].ports == slices[0].ports);
    CHECK(slices[2].id.name == "db-endpoints-2");
    CHECK(slices[2].ports == std::vector<EndpointPort>{{"m", Protocol::kUDP, 9000}});
    for (const auto& s : slices) CHECK(s.serviceName == "db");
  }
  SUBCASE("no subsets: no slices") {
    auto d = decodeEndpoints(json::parse(R"({"metadata":{"name":"db"},"subsets":null})"));
    REQUIRE(d);
    CHECK(d.value->empty());
  }
  SUBCASE("all-fields fixture, repaired field by field") {
    json o = fixtureJson("k8s/all-fields/core.v1.Endpoints.json");
    auto d = decodeEndpoints(o);
    REQUIRE(d.error);
    CHECK(d.error->object == "Endpoints namespaceValue/nameValue");
    CHECK(d.error->field == "subsets[0].addresses[0].ip");
    o["subsets"][0]["addresses"][0]["ip"] = "198.18.1.1";
    d = decodeEndpoints(o);
    REQUIRE(d.error);
    CHECK(d.error->field == "subsets[0].notReadyAddresses[0].ip");
    o["subsets"][0]["notReadyAddresses"][0]["ip"] = "198.18.1.2";
    d = decodeEndpoints(o);
    REQUIRE(d.error);
    CHECK(d.error->field == "subsets[0].ports[0].protocol");
    o["subsets"][0]["ports"][0]["protocol"] = "TCP";
    d = decodeEndpoints(o);
    REQUIRE(d);
    REQUIRE(d.value->size() == 1);
    CHECK(d.value->front().ports == std::vector<EndpointPort>{{"nameValue", Protocol::kTCP, 2}});
    CHECK(d.value->front().endpoints.size() == 2);
    CHECK(d.value->front().endpoints[0].nodeName == "nodeNameValue");
  }
  SUBCASE("bad port and missing IP") {
    json o = json::parse(R"({"metadata":{"name":"db"},"subsets":[{"addresses":[{"ip":"198.18.1.1"}],"ports":[{}]}]})");
    auto d = decodeEndpoints(o);
    REQUIRE(d.error);
    CHECK(d.error->field == "subsets[0].ports[0].port");
    o = json::parse(R"({"metadata":{"name":"db"},"subsets":[{"addresses":[{"nodeName":"x"}]}]})");
    d = decodeEndpoints(o);
    REQUIRE(d.error);
    CHECK(d.error->field == "subsets[0].addresses[0].ip");
  }
}

// --- Node -------------------------------------------------------------------------------------

namespace {

// A Node as `kubectl get node -o json` prints it (trimmed), with fields sluice does not read.
json nodeObject() {
  return json::parse(R"({
    "kind": "Node", "apiVersion": "v1",
    "metadata": {
      "name": "node-1", "uid": "3f0c1a52-1111-4e0e-9c37-5f1f3c2d9a10", "resourceVersion": "48213",
      "creationTimestamp": "2026-11-20T08:00:00Z",
      "labels": {"kubernetes.io/hostname": "node-1", "kubernetes.io/os": "linux",
                 "topology.kubernetes.io/region": "eu-west-1",
                 "topology.kubernetes.io/zone": "eu-west-1a",
                 "failure-domain.beta.kubernetes.io/zone": "old-zone"},
      "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
      "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1"}]
    },
    "spec": {"podCIDR": "198.18.64.0/24", "podCIDRs": ["198.18.64.0/24", "fd00:64::/64"],
             "providerID": "aws:///eu-west-1a/i-0abc",
             "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule",
                         "timeAdded": "2026-11-25T10:00:00Z"}],
             "someFutureField": {"x": 1}},
    "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.11"}],
               "nodeInfo": {"kubeletVersion": "v1.34.1"}}
  })");
}

Problem nodeError(const json& obj) {
  auto d = decodeNode(obj);
  REQUIRE_FALSE(d);
  REQUIRE(d.error);
  return *d.error;
}

}  // namespace

TEST_CASE("decode Node: zone label, eligibility, unknown fields ignored") {
  auto d = decodeNode(nodeObject());
  REQUIRE(d);
  const NodeInfo& n = *d.value;
  CHECK(n.name == "node-1");
  CHECK(n.present);
  CHECK(n.zone == "eu-west-1a");  // the GA label, not the beta one
  CHECK(n.labels.at("kubernetes.io/os") == "linux");
  CHECK_FALSE(n.deletionPending);
  CHECK_FALSE(n.toBeDeleted);  // another taint does not count
  CHECK(n.eligible());

  json tainted = nodeObject();
  tainted["spec"]["taints"].push_back({{"key", "ToBeDeletedByClusterAutoscaler"}, {"value", "1764064800"},
                                       {"effect", "NoSchedule"}});
  d = decodeNode(tainted);
  REQUIRE(d);
  CHECK(d.value->toBeDeleted);
  CHECK_FALSE(d.value->eligible());

  json deleting = nodeObject();
  deleting["metadata"]["deletionTimestamp"] = "2026-11-25T12:00:00Z";
  d = decodeNode(deleting);
  REQUIRE(d);
  CHECK(d.value->deletionPending);
  CHECK_FALSE(d.value->eligible());

  // null is an absent field, as Go reads it; no labels means no zone.
  json bare = {{"metadata", {{"name", "node-2"}, {"labels", nullptr}, {"deletionTimestamp", nullptr}}},
               {"spec", {{"taints", nullptr}}}};
  d = decodeNode(bare);
  REQUIRE(d);
  CHECK(d.value->zone.empty());
  CHECK(d.value->eligible());
  // A Node has no namespace: none is made up for it.
  CHECK(nodeError({{"metadata", {{"name", 7}}}}).object == "Node <unnamed>");
}

TEST_CASE("decode Node: a bad field is a problem naming the Node and the field") {
  auto expect = [](json obj, const std::string& field) {
    Problem p = nodeError(obj);
    CHECK(p.object == "Node node-1");
    CHECK(p.field == field);
    CHECK_FALSE(p.reason.empty());
  };
  json n = nodeObject();
  n["spec"]["taints"] = "ToBeDeletedByClusterAutoscaler";
  expect(n, "spec.taints");
  n = nodeObject();
  n["spec"]["taints"].push_back({{"key", 5}});
  expect(n, "spec.taints[1].key");
  n = nodeObject();
  n["spec"]["taints"].push_back("NoSchedule");
  expect(n, "spec.taints[1]");
  n = nodeObject();
  n["metadata"]["labels"]["topology.kubernetes.io/zone"] = 1;
  expect(n, "metadata.labels.topology.kubernetes.io/zone");
  n = nodeObject();
  n["metadata"]["deletionTimestamp"] = true;
  expect(n, "metadata.deletionTimestamp");
  n = nodeObject();
  n["spec"] = json::array();
  expect(n, "spec");
}
