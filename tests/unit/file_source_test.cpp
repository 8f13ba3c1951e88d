#include <doctest/doctest.h>

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "builders.h"
#include "fixtures.h"
#include "sluice/file_source.h"

using namespace sluice;
using sluice::testing::ip;
using sluice::testing::readFixture;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "sluice-file-XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name, std::ios::binary | std::ios::trunc) << text;
    return path_ / name;
  }

 private:
  fs::path path_;
};

// Records what a source delivers; waitFor() blocks until a predicate holds (or 5 s pass, which
// only happens when the behaviour under test is broken).
class RecordingSink : public StateSink {
 public:
  void upsertService(Service) override {}
  void removeService(const ObjectName&) override {}
  void upsertSlice(EndpointSlice) override {}
  void removeSlice(const ObjectName&) override {}
  void replaceServices(std::vector<Service> all) override {
    std::lock_guard l(mu_);
    services = std::move(all);
    ++replaces;
    cv_.notify_all();
  }
  void replaceSlices(std::vector<EndpointSlice> all) override {
    std::lock_guard l(mu_);
    slices = std::move(all);
    ++replaces;
    cv_.notify_all();
  }
  void synced(ResourceKind kind) override {
    std::lock_guard l(mu_);
    syncedKinds.push_back(kind);
    cv_.notify_all();
  }
  void problem(Problem p) override {
    std::lock_guard l(mu_);
    problems.push_back(std::move(p));
    cv_.notify_all();
  }
  void problemCleared(const std::string& object) override {
    std::lock_guard l(mu_);
    cleared.push_back(object);
    cv_.notify_all();
  }
  template <typename Pred>
  bool waitFor(Pred pred) {
    std::unique_lock l(mu_);
    return cv_.wait_for(l, 5s, [&] { return pred(*this); });
  }
  template <typename Fn>
  auto locked(Fn fn) {
    std::lock_guard l(mu_);
    return fn(*this);
  }

  std::vector<Service> services;
  std::vector<EndpointSlice> slices;
  std::vector<ResourceKind> syncedKinds;
  std::vector<Problem> problems;
  std::vector<std::string> cleared;
  int replaces = 0;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
};

const char* kWebYaml = R"(# a Service and its slice, as kubectl applies them
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  type: NodePort
  clusterIP: 198.18.0.10
  ports:
  - name: http
    port: 80
    targetPort: "http"
    nodePort: 30080
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: ["198.18.1.1"]
  conditions: {ready: true}
  nodeName: node-a
- addresses: ["198.18.1.2"]
  conditions:
    ready: false
    serving: true
    terminating: true
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {replicas: 3}
---
)";

std::string serviceYaml(const std::string& name, const std::string& clusterIP, int port) {
  return "apiVersion: v1\nkind: Service\nmetadata:\n  name: " + name + "\nspec:\n  clusterIP: " + clusterIP +
         "\n  ports:\n  - port: " + std::to_string(port) + "\n";
}

}  // namespace

TEST_CASE("file source: YAML manifests as kubectl applies them") {
  auto set = parseManifests(kWebYaml, "web.yaml");
  REQUIRE(set);
  CHECK(set->problems.empty());
  REQUIRE(set->services.size() == 1);
  const Service& s = set->services[0];
  CHECK(s.id == ObjectName{"shop", "web"});
  CHECK(s.type == ServiceType::kNodePort);
  CHECK(s.ports == std::vector<ServicePort>{{"http", Protocol::kTCP, 80, 30080}});
  CHECK(s.labels.at("app") == "web");
  REQUIRE(set->slices.size() == 1);
  const EndpointSlice& sl = set->slices[0];
  CHECK(sl.serviceName == "web");
  CHECK(sl.ports == std::vector<EndpointPort>{{"http", Protocol::kTCP, 8080}});
  REQUIRE(sl.endpoints.size() == 2);
  CHECK(sl.endpoints[0].nodeName == "node-a");
  CHECK(sl.endpoints[1].terminating);
  CHECK_FALSE(sl.endpoints[1].ready);
}

TEST_CASE("file source: YAML scalars keep their Kubernetes types") {
  SUBCASE("None stays a string: headless") {
    auto set = parseManifests("kind: Service\nmetadata: {name: h}\nspec: {clusterIP: None}\n", "h.yaml");
    REQUIRE(set);
    REQUIRE(set->services.size() == 1);
    CHECK(set->services[0].clusterIPs.empty());
  }
  SUBCASE("a quoted port is a string, rejected as kubectl rejects it; the rest applies") {
    std::string text = serviceYaml("good", "198.18.0.1", 80) +
                       "---\nkind: Service\nmetadata: {name: bad}\nspec:\n  ports:\n  - port: \"80\"\n";
    auto set = parseManifests(text, "x.yaml");
    REQUIRE(set);
    CHECK(set->services.size() == 1);
    REQUIRE(set->problems.size() == 1);
    CHECK(set->problems[0].object == "Service default/bad");
    CHECK(set->problems[0].field == "spec.ports[0].port");
    CHECK(set->problems[0].reason.find("x.yaml document 1") != std::string::npos);
  }
  SUBCASE("null, empty values, numbers") {
    auto set = parseManifests(R"(kind: EndpointSlice
metadata: {name: s, labels: {kubernetes.io/service-name: svc}}
addressType: IPv6
ports:
- name: ~
  port: 0x1F90
- name:
  port: 9000
  protocol: UDP
endpoints:
- addresses: ['fd00::1']
  zone: "1"
  hints: {forZones: [{name: 2}]}
)",
                              "s.yml");
    REQUIRE(set);
    // zone "1" is quoted (a string); a hint name 2 is a number: rejected, as the API would.
    REQUIRE(set->problems.size() == 1);
    CHECK(set->problems[0].field == "endpoints[0].hints.forZones[0].name");
  }
  SUBCASE("hex, negative and float ports") {
    for (auto [text, ok] : {std::pair{"0x50", true}, {"+80", true}, {"-1", false}, {"80.0", false}, {"1e2", false}}) {
      CAPTURE(text);
      auto set = parseManifests(std::string("kind: Service\nmetadata: {name: a}\nspec: {clusterIP: 198.18.0.1, ports: [{port: ") +
                                    text + "}]}\n",
                                "p.yaml");
      REQUIRE(set);
      CHECK(set->services.size() == (ok ? 1u : 0u));
      if (ok) CHECK(set->services[0].ports[0].port == 80);
    }
  }
}

TEST_CASE("file source: anchors and aliases expand like any YAML reader's") {
  // Anchors live within one document (YAML 1.2 §3.2.2.2), hence one List.
  auto set = parseManifests(R"(kind: List
items:
- kind: Service
  metadata: {name: a}
  spec:
    clusterIP: 198.18.0.1
    ports: &ports
    - {name: &n http, port: 80}
    - {name: dns, port: 53, protocol: UDP}
- kind: Service
  metadata: {name: b}
  spec:
    clusterIP: 198.18.0.2
    ports: *ports
    selector: {*n : web}
)",
                            "alias.yaml");
  REQUIRE(set);
  REQUIRE(set->services.size() == 2);
  CHECK(set->problems.empty());
  CHECK(set->services[0].ports == set->services[1].ports);
  REQUIRE(set->services[1].ports.size() == 2);
  CHECK(set->services[1].ports[0].name == "http");
  CHECK(set->services[1].ports[1].port == 53);
}

TEST_CASE("file source: lists and JSON") {
  SUBCASE("kind: List with mixed items") {
    auto set = parseManifests(R"({"apiVersion":"v1","kind":"List","items":[
      {"kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"198.18.0.1","ports":[{"port":80}]}},
      {"kind":"ConfigMap","metadata":{"name":"c"}},
      {"kind":"Endpoints","metadata":{"name":"a"},"subsets":[{"addresses":[{"ip":"198.18.1.1"}],"ports":[{"port":80}]}]}]})",
                              "l.json");
    REQUIRE(set);
    CHECK(set->services.size() == 1);
    REQUIRE(set->slices.size() == 1);
    CHECK(set->slices[0].id.name == "a-endpoints-0");
  }
  SUBCASE("typed lists: items without kind") {
    auto services = parseManifests(readFixture("k8s/captured/servicelist.minikube-2020.json"), "svc.json");
    REQUIRE(services);
    REQUIRE(services->services.size() == 1);
    CHECK(services->services[0].id == ObjectName{"kube-system", "kube-dns"});
    auto slices = parseManifests(readFixture("k8s/captured/endpointslicelist.kind-2020.json"), "es.json");
    REQUIRE(slices);
    CHECK(slices->slices.size() == 2);
    auto endpoints = parseManifests(readFixture("k8s/captured/endpointslist.2020.json"), "ep.json");
    REQUIRE(endpoints);
    CHECK(endpoints->slices.size() == 1);
  }
  SUBCASE("all-fields fixtures parse; their placeholder values are reported, not fatal") {
    for (const char* f : {"k8s/all-fields/core.v1.Service.json", "k8s/all-fields/discovery.k8s.io.v1.EndpointSlice.json",
                          "k8s/all-fields/core.v1.Endpoints.json", "k8s/all-fields/coordination.k8s.io.v1.Lease.json"}) {
      CAPTURE(f);
      auto set = parseManifests(readFixture(f), "all.json");
      REQUIRE(set);
      CHECK(set->services.empty());
      CHECK(set->slices.empty());
      CHECK(set->problems.size() == (std::string(f).find("Lease") != std::string::npos ? 0u : 1u));
    }
  }
  SUBCASE("the same JSON read as YAML gives the same values") {
    std::string text = readFixture("k8s/synthesized/service.loadbalancer-all-proxy-fields.json");
    auto asJson = parseManifests(text, "lb.json");
    auto asYaml = parseManifests(text, "lb.yaml");
    REQUIRE(asJson);
    REQUIRE(asYaml);
    REQUIRE(asJson->services.size() == 1);
    CHECK(asJson->services == asYaml->services);
  }
  SUBCASE("a duplicate definition: the last wins, reported") {
    auto set = parseManifests(serviceYaml("a", "198.18.0.1", 80) + "---\n" + serviceYaml("a", "198.18.0.2", 81), "d.yaml");
    REQUIRE(set);
    REQUIRE(set->services.size() == 1);
    CHECK(set->services[0].ports[0].port == 81);
    REQUIRE(set->problems.size() == 1);
    CHECK(set->problems[0].reason.find("more than once") != std::string::npos);
  }
}

// A JSON List is decoded item by item while it is parsed (lib/file_source.cpp, JsonListStream),
// or, for shapes that path does not take, as one document. The YAML reader always builds the
// whole document first, so reading the same text as YAML must give the same values, problems
// and errors.
TEST_CASE("file source: a JSON List decoded item by item gives what the whole document gives") {
  const std::string svcA = R"({"kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"198.18.0.1","ports":[{"port":80}]}})";
  const std::string svcA2 = R"({"kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"198.18.0.1","ports":[{"port":81}]}})";
  const std::string bad = R"({"kind":"Service","metadata":{"name":"bad"},"spec":{"type":"Weird"}})";
  const std::string slice = R"({"kind":"EndpointSlice","metadata":{"name":"a-1","labels":{"kubernetes.io/service-name":"a"}},
    "addressType":"IPv4","ports":[{"port":8080}],"endpoints":[{"addresses":["198.18.1.1"],"nodeName":"n1"},
    {"addresses":["198.18.1.2"],"conditions":{"ready":false}}]})";
  const std::string fqdn = R"({"kind":"EndpointSlice","metadata":{"name":"f","labels":{"kubernetes.io/service-name":"a"}},
    "addressType":"FQDN","endpoints":[{"addresses":["example.com"]}]})";
  const std::string kindless = R"({"metadata":{"name":"k"},"spec":{"clusterIP":"198.18.0.9","ports":[{"port":90}]}})";
  const std::vector<std::string> texts = {
      // kind first (what bench/daemon_bench.py writes), mixed items, a rejected one, a duplicate
      R"({"kind":"List","items":[)" + svcA + "," + R"({"kind":"ConfigMap","metadata":{"name":"c"}})" + "," + bad + "," +
          slice + "," + fqdn + "," + svcA2 + "]}",
      // kubectl's order: items before kind
      R"({"apiVersion":"v1","items":[)" + slice + "," + svcA + R"(],"kind":"List","metadata":{}})",
      // typed lists: kindless items, with the List's kind read before and after them
      R"({"kind":"ServiceList","items":[)" + kindless + "," + svcA + "]}",
      R"({"items":[)" + kindless + "," + svcA + R"(],"kind":"ServiceList"})",
      // errors: a kindless item of a plain List, an item that is no mapping, no kind at all
      R"({"kind":"List","items":[)" + svcA + "," + kindless + "]}",
      R"({"items":[)" + svcA + "," + kindless + R"(],"kind":"List"})",
      R"({"kind":"List","items":[)" + svcA + R"(,5,)" + slice + "]}",
      R"({"items":[)" + svcA + "]}",
      // "items" of something that is no List; repeated keys (the last wins, as in the YAML reader)
      R"({"kind":"Thing","items":[)" + svcA + "]}",
      R"({"kind":"List","items":[)" + svcA + R"(],"items":[)" + slice + "]}",
      R"({"kind":"Thing","items":[)" + svcA + R"(],"kind":"List"})",
      // empty and null items, a single object
      R"({"kind":"List","items":[]})",
      R"({"kind":"List","items":null})",
      svcA,
  };
  auto normalized = [](std::string s) {
    for (size_t at; (at = s.find("m.yaml")) != std::string::npos;) s.replace(at, 6, "m.json");
    return s;
  };
  for (const auto& text : texts) {
    CAPTURE(text);
    auto streamed = parseManifests(text, "m.json");
    auto whole = parseManifests(text, "m.yaml");
    REQUIRE(streamed.isOk() == whole.isOk());
    if (!whole) {
      CHECK(streamed.status().message() == normalized(whole.status().message()));
      continue;
    }
    CHECK(streamed->services == whole->services);
    CHECK(streamed->slices == whole->slices);
    REQUIRE(streamed->problems.size() == whole->problems.size());
    for (size_t i = 0; i < whole->problems.size(); ++i) {
      CHECK(streamed->problems[i].object == whole->problems[i].object);
      CHECK(streamed->problems[i].field == whole->problems[i].field);
      CHECK(streamed->problems[i].reason == normalized(whole->problems[i].reason));
    }
  }
  // And they are what they should be, not merely equal.
  auto first = parseManifests(texts[0], "m.json");
  REQUIRE(first);
  REQUIRE(first->services.size() == 1);
  CHECK(first->services[0].ports[0].port == 81);  // the later definition
  CHECK(first->slices.size() == 1);
  CHECK(first->problems.size() == 2);  // the rejected Service and the duplicate
  CHECK(parseManifests(texts[3], "m.json")->services.size() == 2);
  CHECK(parseManifests(texts[4], "m.json").status().message() == "m.json: document 0 items[1]: no kind");
  CHECK(parseManifests(texts[6], "m.json").status().message() == "m.json: document 0 items[1]: not a mapping");
  CHECK(parseManifests(texts[8], "m.json")->services.empty());
  CHECK(parseManifests(texts[9], "m.json")->slices.size() == 1);
}

TEST_CASE("file source: syntax errors name file, document and position") {
  struct Case {
    const char* text;
    const char* name;
    const char* expect;
  };
  for (const auto& c : std::vector<Case>{
           {"kind: Service\nmetadata: {name: [a\n", "a.yaml", "a.yaml: line"},
           {"kind: Service\n---\n- 1\n- 2\n", "b.yaml", "b.yaml: document 1: not a mapping"},
           {"metadata: {name: x}\n", "c.yaml", "c.yaml: document 0: no kind"},
           {"{\"kind\":\"List\",\"items\":{}}", "d.json", "d.json: document 0: items: not a list"},
           {"{\"kind\":\"List\",\"items\":[{\"metadata\":{}}]}", "e.json", "e.json: document 0 items[0]: no kind"},
           {"{\"kind\": \"Service\",", "f.json", "f.json: line"},
           {"a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
            "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
            "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nkind: x\n",
            "bomb.yaml", "too many YAML nodes"},
           // yaml-cpp 0.7's LoadAll() never returns on these (found by manifest_fuzz).
           {"{\"kind\":\"Service\"},\"items\":[]}\n", "loop.yaml", "loop.yaml: line 1 column"},
           {",\n", "comma.yaml", "comma.yaml: line 1 column 1"},
           {"{a: 1}: b\nkind: x\n", "key.yaml", "a mapping key is not a scalar"},
           {"kind: *nothing\n", "alias.yaml", "alias.yaml: line 1"},
       }) {
    std::string text = c.text;
    CAPTURE(text);
    auto set = parseManifests(text, c.name);
    REQUIRE_FALSE(set);
    CHECK(set.status().code() == Code::kInvalidArgument);
    std::string message = set.status().message();
    CAPTURE(message);
    CHECK(message.find(c.expect) != std::string::npos);
  }
}

TEST_CASE("file source: an alias bomb of long strings is refused, not expanded") {
  std::string text = "a: &a \"" + std::string(10000, 'x') + "\"\nb: &b [";
  for (int i = 0; i < 100; ++i) text += i ? ",*a" : "*a";
  text += "]\nc: [";
  for (int i = 0; i < 100; ++i) text += i ? ",*b" : "*b";
  text += "]\nkind: x\n";
  auto set = parseManifests(text, "bytes.yaml");
  REQUIRE_FALSE(set);
  CHECK(set.status().message().find("too many bytes") != std::string::npos);
}

TEST_CASE("file source: a directory of manifests") {
  TempDir dir;
  dir.write("a.yaml", kWebYaml);
  dir.write("b.yml", serviceYaml("b", "198.18.0.2", 82));
  dir.write("c.json", readFixture("k8s/captured/servicelist.minikube-2020.json"));
  dir.write(".hidden.yaml", "not: [valid");
  dir.write("notes.txt", "not: [valid");
  dir.write("d.yaml~", "not: [valid");
  auto set = loadManifests(dir.path().string());
  REQUIRE(set);
  CHECK(set->services.size() == 3);
  CHECK(set->slices.size() == 1);
  CHECK_FALSE(loadManifests((dir.path() / "missing.yaml").string()).isOk());
}

TEST_CASE("file source: start delivers, syncs, and refuses a broken or missing config") {
  TempDir dir;
  RecordingSink sink;
  {
    FileSource missing({(dir.path() / "nope").string()});
    CHECK(missing.start(sink).code() == Code::kNotFound);
  }
  auto file = dir.write("svc.yaml", "kind: Service\nmetadata: {name: [\n");
  {
    FileSource broken({file.string()});
    CHECK(broken.start(sink).code() == Code::kInvalidArgument);
    CHECK(sink.syncedKinds.empty());
  }
  dir.write("svc.yaml", kWebYaml);
  FileSource src({file.string(), 30ms});
  CHECK(src.name() == "file:" + file.string());
  REQUIRE(src.start(sink).isOk());
  CHECK(sink.syncedKinds == std::vector<ResourceKind>{ResourceKind::kService, ResourceKind::kEndpointSlice});
  CHECK(sink.services.size() == 1);
  CHECK(sink.slices.size() == 1);
  src.stop();
  src.stop();  // idempotent
}

TEST_CASE("file source: reloads on change, rename-over and partial writes") {
  TempDir dir;
  dir.write("web.yaml", kWebYaml);
  RecordingSink sink;
  FileSource src({dir.path().string(), 50ms});
  REQUIRE(src.start(sink).isOk());
  REQUIRE(sink.locked([](auto& s) { return s.services.size(); }) == 1);

  SUBCASE("a new file, then an in-place edit") {
    dir.write("extra.yaml", serviceYaml("extra", "198.18.0.3", 83));
    CHECK(sink.waitFor([](auto& s) { return s.services.size() == 2; }));
    dir.write("extra.yaml", serviceYaml("extra", "198.18.0.3", 84));
    CHECK(sink.waitFor([](auto& s) {
      for (const auto& svc : s.services)
        if (svc.id.name == "extra") return svc.ports[0].port == 84;
      return false;
    }));
    fs::remove(dir.path() / "extra.yaml");
    CHECK(sink.waitFor([](auto& s) { return s.services.size() == 1; }));
  }
  SUBCASE("an editor's write-temp-then-rename") {
    dir.write(".web.yaml.swp", serviceYaml("web", "198.18.0.10", 8080));
    fs::rename(dir.path() / ".web.yaml.swp", dir.path() / "web.yaml");
    CHECK(sink.waitFor([](auto& s) { return s.slices.empty() && s.services.size() == 1 && s.services[0].ports[0].port == 8080; }));
  }
  SUBCASE("a partial write keeps the last good state, the completed file applies") {
    std::string full = serviceYaml("web", "198.18.0.10", 9090) + "---\n" + serviceYaml("other", "198.18.0.11", 91);
    size_t cut = full.find("other") + 3;  // inside the second document's flow
    {
      std::ofstream out(dir.path() / "web.yaml", std::ios::binary | std::ios::trunc);
      out << full.substr(0, cut) << "\n  ports: [{port: ";
      out.flush();
      // The writer pauses longer than the debounce: the source reads the partial file.
      CHECK(sink.waitFor([](auto& s) { return !s.problems.empty(); }));
      auto p = sink.locked([](auto& s) { return s.problems.back(); });
      CHECK(p.object == "file:" + dir.path().string());
      CHECK(p.reason.find("web.yaml") != std::string::npos);
      // Nothing changed: the last good state stays.
      CHECK(sink.locked([](auto& s) { return s.services.size() == 1 && s.slices.size() == 1; }));
      out.seekp(0);
      out << full;
    }
    fs::resize_file(dir.path() / "web.yaml", full.size());
    CHECK(sink.waitFor([](auto& s) { return s.services.size() == 2 && s.slices.empty(); }));
    CHECK(sink.waitFor([&](auto& s) {
      return std::find(s.cleared.begin(), s.cleared.end(), "file:" + dir.path().string()) != s.cleared.end();
    }));
  }
  SUBCASE("the same bytes again deliver nothing, also after a broken version in between") {
    const int before = sink.locked([](auto& s) { return s.replaces; });
    dir.write("web.yaml", "kind: Service\nmetadata: {name: [\n");
    CHECK(sink.waitFor([](auto& s) { return !s.problems.empty(); }));
    dir.write("web.yaml", kWebYaml);
    // The reload that sees the last good bytes again clears the error and delivers nothing.
    CHECK(sink.waitFor([&](auto& s) {
      return std::find(s.cleared.begin(), s.cleared.end(), "file:" + dir.path().string()) != s.cleared.end();
    }));
    CHECK(sink.locked([](auto& s) { return s.replaces; }) == before);
    // Different bytes are delivered again (both kinds, whatever changed).
    dir.write("web.yaml", std::string(kWebYaml) + "# edited\n");
    CHECK(sink.waitFor([&](auto& s) { return s.replaces == before + 2; }));
  }
  SUBCASE("a bad object is skipped and reported, then cleared when fixed") {
    dir.write("bad.yaml", "kind: Service\nmetadata: {name: bad}\nspec: {type: Weird}\n");
    CHECK(sink.waitFor([](auto& s) { return !s.problems.empty(); }));
    auto p = sink.locked([](auto& s) { return s.problems.back(); });
    CHECK(p.object == "Service default/bad");
    CHECK(p.field == "spec.type");
    CHECK(sink.locked([](auto& s) { return s.services.size(); }) == 1);
    dir.write("bad.yaml", serviceYaml("bad", "198.18.0.12", 80));
    CHECK(sink.waitFor([](auto& s) {
      return s.services.size() == 2 &&
             std::find(s.cleared.begin(), s.cleared.end(), "Service default/bad") != s.cleared.end();
    }));
  }
  src.stop();
}

TEST_CASE("file source: a ConfigMap volume's atomic symlink swap is seen") {
  TempDir dir;
  const fs::path& d = dir.path();
  fs::create_directory(d / "..2026_1");
  std::ofstream(d / "..2026_1" / "svc.yaml") << serviceYaml("cm", "198.18.0.20", 80);
  fs::create_directory_symlink("..2026_1", d / "..data");
  fs::create_symlink("..data/svc.yaml", d / "svc.yaml");
  RecordingSink sink;
  FileSource src({(d / "svc.yaml").string(), 30ms});
  REQUIRE(src.start(sink).isOk());
  REQUIRE(sink.services.size() == 1);
  CHECK(sink.services[0].ports[0].port == 80);
  // What the kubelet does: write the new version aside, then rename a new "..data" link over.
  fs::create_directory(d / "..2026_2");
  std::ofstream(d / "..2026_2" / "svc.yaml") << serviceYaml("cm", "198.18.0.20", 81);
  fs::create_directory_symlink("..2026_2", d / "..data_tmp");
  fs::rename(d / "..data_tmp", d / "..data");
  CHECK(sink.waitFor([](auto& s) { return s.services.size() == 1 && s.services[0].ports[0].port == 81; }));
  src.stop();
}
