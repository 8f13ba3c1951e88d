// explain(): the Service, endpoints, masquerade and reasons named from a desired state; and
// `sluiced explain` run on a manifest file.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include <doctest/doctest.h>

#include "builders.h"
#include "sluice/explain.h"

using namespace sluice;
using namespace sluice::testing;

namespace {

Snapshot state() {
  Snapshot s;
  s.upsertService(clusterIPService("default", "web", "198.19.0.10", {{"http", Protocol::kTCP, 80, 0}}));
  s.upsertSlice(slice("default", "web-1", "web", {{"http", Protocol::kTCP, 8080}},
                      {endpoint("198.18.1.11", true, true, false, "node-a"), endpoint("198.18.1.12", true, true, false, "node-b"),
                       endpoint("198.18.1.13", false, false, true, "node-b")}));
  s.upsertService(clusterIPService("default", "empty", "198.19.0.11", {{"http", Protocol::kTCP, 80, 0}}));
  return s;
}

Explanation mustExplain(const Snapshot& s, const char* src, const char* dst) {
  auto req = parseExplainRequest(src, dst);
  REQUIRE_MESSAGE(req.isOk(), req.status().toString());
  auto ex = explain(s, config(), *req);
  REQUIRE_MESSAGE(ex.isOk(), ex.status().toString());
  return std::move(ex).value();
}

}  // namespace

TEST_CASE("explain: parses SRC and DST:PORT/PROTO, rejects what is not") {
  auto r = parseExplainRequest("203.0.113.5", "[fd00::a]:53/udp");
  REQUIRE(r.isOk());
  CHECK(r->dst == ip("fd00::a"));
  CHECK(r->port == 53);
  CHECK(r->protocol == Protocol::kUDP);
  CHECK(parseExplainRequest("203.0.113.5", "198.19.0.10:80")->protocol == Protocol::kTCP);
  CHECK_FALSE(parseExplainRequest("nope", "198.19.0.10:80/tcp").isOk());
  CHECK_FALSE(parseExplainRequest("203.0.113.5", "198.19.0.10:0/tcp").isOk());
  CHECK_FALSE(parseExplainRequest("203.0.113.5", "198.19.0.10:80/icmp").isOk());
  CHECK_FALSE(parseExplainRequest("203.0.113.5", "198.19.0.10").isOk());
}

TEST_CASE("explain: a ClusterIP from outside the cluster CIDR: the serving endpoints, evenly, masqueraded") {
  Explanation ex = mustExplain(state(), "203.0.113.5", "198.19.0.10:80/tcp");
  REQUIRE(ex.service);
  CHECK(ex.service->toString() == "default/web");
  CHECK(ex.frontend == "ClusterIP");
  CHECK(ex.disposition == nft::Disposition::kAccepted);
  REQUIRE(ex.candidates.size() == 2);  // the terminating, not serving endpoint gets nothing
  for (const ExplainCandidate& c : ex.candidates) {
    CHECK(c.probability == doctest::Approx(0.5));
    CHECK((c.target.address == ip("198.18.1.11") || c.target.address == ip("198.18.1.12")));
    CHECK(c.target.port == 8080);
    REQUIRE(c.endpoint);
  }
  CHECK(ex.masqueraded);
  const std::string text = ex.toString();
  CHECK(text.find("service: default/web port http 80/TCP via ClusterIP") != std::string::npos);
  CHECK(text.find("masquerade: yes") != std::string::npos);
  CHECK(ex.toJson().find("\"default/web\"") != std::string::npos);
}

TEST_CASE("explain: from a pod, no masquerade, no endpoints is a reject with the reason") {
  Explanation pod = mustExplain(state(), "198.18.2.7", "198.19.0.10:80/tcp");
  CHECK_FALSE(pod.masqueraded);
  CHECK(pod.candidates.size() == 2);

  Explanation empty = mustExplain(state(), "198.18.2.7", "198.19.0.11:80/tcp");
  CHECK(empty.disposition == nft::Disposition::kRejected);
  CHECK(empty.candidates.empty());
  CHECK(empty.reason == "the Service port has no endpoints");

  Explanation none = mustExplain(state(), "198.18.2.7", "198.19.0.99:80/tcp");
  CHECK_FALSE(none.service);
  CHECK(none.reason.find("no Service") == 0);
}

TEST_CASE("explain: the family of the packet must be the config's") {
  auto req = parseExplainRequest("fd00::1", "[fd00::a]:80/tcp");
  REQUIRE(req.isOk());
  CHECK(explain(state(), config(), *req).status().code() == Code::kInvalidArgument);
}

#ifdef SLUICED_PATH
TEST_CASE("sluiced explain: computes from the manifest --source names") {
  const std::string path = "/tmp/sluiced-explain-test-" + std::to_string(::getpid()) + ".yaml";
  {
    std::ofstream f(path);
    f << "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
         "spec: {clusterIP: 198.19.0.10, clusterIPs: [198.19.0.10], ports: [{name: http, protocol: TCP, port: 80}]}\n"
         "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
         "metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\n"
         "addressType: IPv4\nports: [{name: http, protocol: TCP, port: 8080}]\n"
         "endpoints:\n- addresses: [198.18.1.11]\n  nodeName: node-a\n- addresses: [198.18.1.12]\n  nodeName: node-a\n";
  }
  auto run = [](const std::string& args, int* code) {
    std::string out;
    FILE* p = ::popen((std::string(SLUICED_PATH) + " " + args + " 2>&1").c_str(), "r");
    REQUIRE(p);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
    int status = ::pclose(p);
    *code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return out;
  };
  int code = -1;
  const std::string common = " --source file:" + path + " --hostname-override node-a --cluster-cidr 198.18.0.0/16";
  std::string out = run("explain 203.0.113.5 198.19.0.10:80/tcp" + common, &code);
  CHECK_MESSAGE(code == 0, out);
  CHECK(out.find("service: default/web") != std::string::npos);
  CHECK(out.find("198.18.1.11:8080  p=0.500") != std::string::npos);
  CHECK(out.find("198.18.1.12:8080  p=0.500") != std::string::npos);
  CHECK(out.find("masquerade: yes") != std::string::npos);

  out = run("explain 203.0.113.5 198.19.0.10:81/tcp" + common, &code);
  CHECK(code == 0);
  CHECK(out.find("service: none") != std::string::npos);

  out = run("explain 203.0.113.5 nowhere" + common, &code);
  CHECK(code == 2);
  ::unlink(path.c_str());
}
#endif
