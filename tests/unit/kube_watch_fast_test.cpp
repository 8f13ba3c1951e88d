// The EndpointSlice watch fast path (simdjson) against the nlohmann DOM reference path: same
// values, same problems, for every fixture and for systematic mutations of a rich slice.
#include <doctest/doctest.h>

#include <filesystem>
#include <functional>

#include "builders.h"
#include "fixtures.h"
#include "watch_equivalence.h"

using namespace sluice;
using namespace sluice::kube;
using sluice::testing::decodeSliceStream;
using sluice::testing::fixturePath;
using sluice::testing::ip;
using sluice::testing::readFixture;
using sluice::testing::StreamOutcome;
using json = nlohmann::json;

namespace {

// Both paths over `body` (fed whole and in 7-byte pieces) must give the same outcome. Returns
// the fast path's outcome.
StreamOutcome sameBothWays(const std::string& body) {
  StreamOutcome dom = decodeSliceStream(body, WatchObjects::kJson, body.size() + 1);
  StreamOutcome fast = decodeSliceStream(body, WatchObjects::kEndpointSlices, body.size() + 1);
  StreamOutcome pieces = decodeSliceStream(body, WatchObjects::kEndpointSlices, 7);
  INFO(body);
  CHECK(dom.fastEvents == 0);
  CHECK(fast == dom);
  CHECK(pieces == dom);
  return fast;
}

std::string event(const json& object, const char* type = "ADDED") {
  return json{{"type", type}, {"object", object}}.dump() + "\n";
}

// A slice using every member the decoder reads, plus members it ignores.
json richSlice() {
  return json::parse(R"({"kind":"EndpointSlice","apiVersion":"discovery.k8s.io/v1",
    "metadata":{"name":"web-1","namespace":"shop","resourceVersion":"77",
      "labels":{"kubernetes.io/service-name":"web","app":"web"},
      "managedFields":[{"manager":"m","fieldsV1":{"f:endpoints":{}}}]},
    "addressType":"IPv4",
    "endpoints":[
      {"addresses":["198.18.1.1"],"conditions":{"ready":true,"serving":true,"terminating":false},
       "nodeName":"n1","zone":"z1","targetRef":{"kind":"Pod","name":"p1"},
       "hints":{"forZones":[{"name":"z1"}],"forNodes":[{"name":"n1"}]}},
      {"addresses":["198.18.1.2","198.18.1.3"],"conditions":{"ready":false}}],
    "ports":[{"name":"http","protocol":"TCP","port":8080,"appProtocol":"http"},
             {"name":"dns","protocol":"UDP","port":53}]})");
}

// Every path (JSON pointer) in `doc`, containers included, the root excluded.
void collectPaths(const json& doc, const json::json_pointer& at, std::vector<json::json_pointer>& out) {
  if (doc.is_object()) {
    for (auto it = doc.begin(); it != doc.end(); ++it) {
      out.push_back(at / it.key());
      collectPaths(*it, at / it.key(), out);
    }
  } else if (doc.is_array()) {
    for (size_t i = 0; i < doc.size(); ++i) {
      out.push_back(at / i);
      collectPaths(doc[i], at / i, out);
    }
  }
}

}  // namespace

TEST_CASE("kube watch fast path: the captured TKE watch line") {
  const std::string line = readFixture("k8s/captured/endpointslice.tke-2023.watch-added.jsonl");
  auto out = sameBothWays(line);
  REQUIRE(out.events.size() == 1);
  CHECK(out.fastEvents == 1);  // managedFields, targetRef, ownerReferences are skipped, not fatal
  const auto& ev = out.events[0];
  CHECK(ev.resourceVersion == "5493506153");
  REQUIRE(ev.slice);
  CHECK(ev.slice->id == ObjectName{"kube-system", "externalnode-proxy-l28pc"});
  CHECK(ev.slice->serviceName == "externalnode-proxy");
  REQUIRE(ev.slice->endpoints.size() == 1);
  CHECK(ev.slice->endpoints[0].addresses == std::vector<IPAddress>{ip("172.24.0.7")});
  CHECK(ev.slice->endpoints[0].nodeName == "10.0.0.29");
  CHECK(ev.slice->ports.size() == 2);
}

TEST_CASE("kube watch fast path: every Kubernetes fixture gives what the DOM path gives") {
  size_t events = 0, fast = 0;
  for (const auto& dir : {"k8s/captured", "k8s/synthesized", "k8s/all-fields"}) {
    for (const auto& entry : std::filesystem::directory_iterator(fixturePath(dir))) {
      const std::string name = std::string(dir) + "/" + entry.path().filename().string();
      CAPTURE(name);
      const std::string text = readFixture(name);
      std::vector<std::string> bodies;
      if (entry.path().extension() == ".jsonl") {
        bodies.push_back(text);  // a watch stream as it is
      } else {
        // An object: as an ADDED and a DELETED event; a list: each item; an array of endpoints
        // (the GKE fragment): inside a slice.
        json doc = json::parse(text);
        std::vector<json> objects;
        if (doc.is_array()) {
          json slice = richSlice();
          slice["endpoints"] = doc;
          objects.push_back(slice);
        } else if (doc.contains("items")) {
          for (const auto& item : doc["items"]) objects.push_back(item);
        } else {
          objects.push_back(doc);
        }
        for (const auto& o : objects) bodies.push_back(event(o) + event(o, "DELETED"));
      }
      for (const auto& body : bodies) {
        auto out = sameBothWays(body);
        events += out.events.size();
        fast += out.fastEvents;
      }
    }
  }
  // Not a vacuous comparison: the valid slices (TKE, kind list, stream, IPv6 hints, default
  // kubernetes) took the fast path.
  CHECK(events > 40);
  CHECK(fast >= 16);
}

TEST_CASE("kube watch fast path: the rich slice is decoded in full") {
  auto out = sameBothWays(event(richSlice(), "MODIFIED"));
  REQUIRE(out.fastEvents == 1);
  const EndpointSlice& s = *out.events.at(0).slice;
  CHECK(out.events[0].type == WatchEventType::kModified);
  CHECK(out.events[0].resourceVersion == "77");
  REQUIRE(s.endpoints.size() == 2);
  CHECK(s.endpoints[0].hints.zones() == std::vector<std::string>{"z1"});
  CHECK(s.endpoints[0].hints.nodes() == std::vector<std::string>{"n1"});
  CHECK(s.endpoints[0].zone == "z1");
  CHECK_FALSE(s.endpoints[1].ready);
  CHECK(s.endpoints[1].serving);
  CHECK(s.endpoints[1].addresses.size() == 2);
  CHECK(s.ports == std::vector<EndpointPort>{{"http", Protocol::kTCP, 8080}, {"dns", Protocol::kUDP, 53}});
}

// Each member and element of the rich slice (and of its event envelope) replaced by a value of
// every JSON kind, removed, or given an unknown sibling: both paths agree every time, which
// covers wrong types at each field, missing fields, nulls and unknown fields.
TEST_CASE("kube watch fast path: mutations of every field agree with the DOM path") {
  const json base = {{"type", "ADDED"}, {"object", richSlice()}};
  std::vector<json::json_pointer> paths;
  collectPaths(base, json::json_pointer(), paths);
  const std::vector<json> values = {nullptr, true, false, 0, 1, -1, 65536, 1.5, "", "x",
                                    "198.18.9.9", "fd00::1", "IPv6", "FQDN", "UDP",
                                    json::array(), json::object(), json::array({nullptr}),
                                    json::array({"x"}), json::array({json::object()}),
                                    json{{"name", "x"}}};
  size_t fast = 0, cases = 0;
  for (const auto& path : paths) {
    CAPTURE(path.to_string());
    for (const auto& v : values) {
      json doc = base;
      doc[path] = v;
      fast += sameBothWays(doc.dump() + "\n").fastEvents;
      ++cases;
    }
    json parent = base;
    json& container = parent[path.parent_pointer()];
    if (container.is_object()) {
      container.erase(path.back());
      fast += sameBothWays(parent.dump() + "\n").fastEvents;
      container["unknownMember"] = json{{"deep", json::array({1, "x", nullptr})}};
      fast += sameBothWays(parent.dump() + "\n").fastEvents;
      cases += 2;
    }
  }
  // Many mutations stay valid (an ignored member changed, a valid value swapped in), and those
  // took the fast path; the rest were declined and decoded by the DOM path.
  CHECK(fast > cases / 10);
  CHECK(fast < cases);
}

TEST_CASE("kube watch fast path: repeated members resolve as the DOM does (last wins)") {
  const std::string body = event(richSlice());
  const std::vector<std::pair<std::string, std::string>> repeats = {
      {R"("name":"web-1")", R"("name":"web-1","name":"web-2")"},
      {R"("name":"web-1")", R"("name":"web-1","name":"")"},
      {R"("addressType":"IPv4")", R"("addressType":"IPv4","addressType":"IPv6")"},
      {R"("port":8080)", R"("port":8080,"port":0)"},
      {R"("ready":false)", R"("ready":false,"ready":true)"},
      {R"("kubernetes.io/service-name":"web")",
       R"("kubernetes.io/service-name":"web","kubernetes.io/service-name":"db")"},
      {R"("kubernetes.io/service-name":"web")",
       R"("kubernetes.io/service-name":"web","kubernetes.io/service-name":7)"},
      {R"("app":"web")", R"("app":7,"app":"web")"},
      {R"("type":"ADDED")", R"("type":"ADDED","type":"BOOKMARK")"},
      // The same key spelled with an escape is the same key (simdjson compares unescaped keys).
      {R"("type":"ADDED")", R"("type":"ADDED","\u0074ype":"DELETED")"},
      {R"("name":"web-1")", R"("name":"web-1","n\u0061me":"web-2")"},
  };
  for (const auto& [from, to] : repeats) {
    std::string mutated = body;
    auto at = mutated.find(from);
    REQUIRE(at != std::string::npos);
    mutated.replace(at, from.size(), to);
    sameBothWays(mutated);
  }
}

TEST_CASE("kube watch fast path: broken lines, other event types and invalid slices decline") {
  const std::vector<std::string> lines = {
      "{", "[]", "\"ADDED\"", "null", R"({"type":"ADDED"})", R"({"type":"ADDED","object":null})",
      R"({"type":"ADDED","object":[]})", R"({"type":"NOPE","object":{}})",
      R"({"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9","annotations":{"k8s.io/initial-events-end":"true"}}}})",
      R"({"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}})",
      R"({"type":"ADDED","object":{"metadata":{"name":"a","labels":{"kubernetes.io/service-name":"s"}},"addressType":"FQDN"}})",
      R"({"type":"ADDED","object":{"metadata":{"name":"a","labels":{"kubernetes.io/service-name":"s"}},"addressType":"IPv6","endpoints":[{"addresses":["198.18.0.1"]}]}})",
      R"({"type":"ADDED","object":{"metadata":{"name":"a"},"addressType":"IPv4"}})",
      R"({"type":"ADDED","object":{"metadata":{"name":"a","labels":{"kubernetes.io/service-name":"s"}},"addressType":"IPv4","ports":[{"port":80.0}]}})",
      R"({"type":"ADDED","object":{"metadata":{"name":"a","labels":{"kubernetes.io/service-name":"s"}},"addressType":"IPv4"}} trailing)",
  };
  for (const auto& line : lines) {
    CAPTURE(line);
    CHECK_FALSE(decodeSliceEventFast(line));
    sameBothWays(line + "\n");
  }
  // Defaults: no namespace ⇒ "default", no conditions ⇒ ready and serving, port 0 left out.
  auto out = sameBothWays(
      R"({"type":"ADDED","object":{"metadata":{"name":"a","labels":{"kubernetes.io/service-name":"s"}},"addressType":"IPv4","endpoints":[{"addresses":["198.18.0.1"]}],"ports":[{"port":0},{"port":80}]}})"
      "\n");
  REQUIRE(out.fastEvents == 1);
  CHECK(out.events[0].slice->id == ObjectName{"default", "a"});
  CHECK(out.events[0].slice->endpoints[0].ready);
  CHECK(out.events[0].slice->ports == std::vector<EndpointPort>{{"", Protocol::kTCP, 80}});
}

// A line whose slice is fine but which is not valid JSON somewhere the reader never looks: the
// DOM path fails the stream, so the fast path must decline it too. (simdjson's On-Demand API
// would not see these: skipping a member only counts its brackets.)
TEST_CASE("kube watch fast path: invalid JSON in unread members declines") {
  const std::string good = event(richSlice());
  const std::vector<std::pair<std::string, std::string>> breakages = {
      {R"("fieldsV1":{"f:endpoints":{}})", R"("fieldsV1":{"f:endpoints":{tru}})"},
      {R"("fieldsV1":{"f:endpoints":{}})", R"("fieldsV1":{"f:endpoints":[1}})"},
      {R"("fieldsV1":{"f:endpoints":{}})", R"("fieldsV1":{"f:endpoints" 1})"},
      {R"("fieldsV1":{"f:endpoints":{}})", R"("fieldsV1":[1,])"},
      {R"("fieldsV1":{"f:endpoints":{}})", R"("fieldsV1":01)"},
      {R"("fieldsV1":{"f:endpoints":{}})", R"("fieldsV1":1e400)"},
      {R"("fieldsV1":{"f:endpoints":{}})", R"("fieldsV1":"\ud800")"},
      {R"("fieldsV1":{"f:endpoints":{}})", R"("fieldsV1":"\x")"},
      {R"("fieldsV1":{"f:endpoints":{}})", "\"fieldsV1\":\"\xed\xa0\x80\""},  // UTF-8 of a surrogate
      {R"("fieldsV1":{"f:endpoints":{}})", "\"fieldsV1\":\"a\x01\""},         // raw control character
      {R"("kind":"Pod")", R"("kind":Pod)"},
      {R"("app":"web")", R"("app":"web",)"},
  };
  for (const auto& [from, to] : breakages) {
    std::string line = good.substr(0, good.size() - 1);
    auto at = line.find(from);
    REQUIRE(at != std::string::npos);
    line.replace(at, from.size(), to);
    CAPTURE(line);
    CHECK_FALSE(decodeSliceEventFast(line));
    auto out = sameBothWays(line + "\n");
    CHECK(out.events.empty());
    CHECK_FALSE(out.status.empty());
  }
}

// simdjson is stricter than nlohmann in a few places; those lines decline and the DOM path
// decodes them, so nothing is lost.
TEST_CASE("kube watch fast path: what only nlohmann accepts goes to the DOM path") {
  // An integer beyond 64 bits (nlohmann reads it as a double) where nothing reads it.
  std::string bigInteger = event(richSlice());
  const std::string name = R"("name":"web-1")";
  bigInteger.replace(bigInteger.find(name), name.size(), R"("generation":18446744073709551616,)" + name);
  const std::string bom = "\xEF\xBB\xBF" + event(richSlice());
  for (const std::string& body : {bigInteger, bom}) {
    CHECK_FALSE(decodeSliceEventFast(body.substr(0, body.size() - 1)));
    auto out = sameBothWays(body);
    REQUIRE(out.events.size() == 1);
    CHECK(out.events[0].slice);
  }
}

TEST_CASE("kube watch fast path: port numbers are read as the DOM reads them") {
  for (const char* number : {"80", "0", "-0", "65535", "65536", "-1", "80.0", "8e1", "1E2", "9223372036854775807",
                             "9223372036854775808", "18446744073709551615", "-9223372036854775808"}) {
    CAPTURE(number);
    std::string body = event(richSlice());
    const std::string from = R"("port":8080)";
    body.replace(body.find(from), from.size(), std::string(R"("port":)") + number);
    auto out = sameBothWays(body);
    REQUIRE(out.events.size() == 1);
    if (std::string_view(number) == "80") CHECK(out.fastEvents == 1);
  }
}

// The stream hands the fast path its line in place when the read buffer goes on for the padding
// simdjson reads past the end, in the buffer of a straddling line, or copied: every chunking of a
// few events must give the same events, all through the fast path.
TEST_CASE("kube watch fast path: in place, straddling and copied lines give the same events") {
  json slice = richSlice();
  std::string body;
  for (int i = 0; i < 3; ++i) {
    slice["metadata"]["resourceVersion"] = std::to_string(100 + i);
    slice["endpoints"][0]["addresses"][0] = "198.18.2." + std::to_string(i);
    body += event(slice, "MODIFIED");
  }
  const StreamOutcome dom = decodeSliceStream(body, WatchObjects::kJson, body.size());
  REQUIRE(dom.events.size() == 3);
  for (size_t chunk : {size_t{1}, size_t{63}, size_t{64}, size_t{65}, size_t{200}, body.size() / 3,
                       body.size() / 3 + 40, body.size() / 3 + 64, body.size() / 2, body.size() - 64,
                       body.size() - 1, body.size()}) {
    CAPTURE(chunk);
    StreamOutcome fast = decodeSliceStream(body, WatchObjects::kEndpointSlices, chunk);
    CHECK(fast == dom);
    CHECK(fast.fastEvents == 3);
  }
}

// Lines beyond the fast path's size cap (its parser keeps buffers sized for the largest line)
// are decoded the DOM way, with the same result.
TEST_CASE("kube watch fast path: a line over the size cap takes the DOM path") {
  json slice = richSlice();
  slice["metadata"]["annotations"]["big"] = std::string(1100 * 1024, 'x');
  auto out = sameBothWays(event(slice));
  REQUIRE(out.events.size() == 1);
  CHECK(out.fastEvents == 0);
  CHECK(out.events[0].slice);
}
