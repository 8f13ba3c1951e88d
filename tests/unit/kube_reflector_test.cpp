// The reflector and HTTP client against the apiserver double over real 127.0.0.1 sockets.
#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "kube_reflector.h"
#include "apiserver.h"
#include "pki.h"
#include "sluice/http_client.h"
#include "sluice/kube_config.h"

namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using sluice::testing::ApiServer;
using sluice::testing::ApiServerOptions;
namespace kube = sluice::kube;

using sluice::testing::eventually;

json service(const std::string& ns, const std::string& name, json labels = json::object()) {
  return {{"metadata", {{"namespace", ns}, {"name", name}, {"labels", labels}}},
          {"spec", {{"clusterIP", "198.18.0.10"}, {"ports", json::array({{{"port", 80}}})}}}};
}

// The objects a reflector currently believes in, by "ns/name".
class Mirror : public kube::ReflectorHandler {
 public:
  void replace(std::vector<json> items) override {
    std::lock_guard lock(mu_);
    objects_.clear();
    for (auto& i : items) objects_[key(i)] = i;
    ++replaces_;
  }
  void apply(const std::string& type, const json& obj) override {
    std::lock_guard lock(mu_);
    if (type == "DELETED") {
      objects_.erase(key(obj));
    } else {
      objects_[key(obj)] = obj;
    }
  }
  bool has(const std::string& k) {
    std::lock_guard lock(mu_);
    return objects_.count(k) > 0;
  }
  size_t size() {
    std::lock_guard lock(mu_);
    return objects_.size();
  }
  int replaces() {
    std::lock_guard lock(mu_);
    return replaces_;
  }

 private:
  static std::string key(const json& o) {
    return o["metadata"].value("namespace", "") + "/" + o["metadata"].value("name", "");
  }
  std::mutex mu_;
  std::map<std::string, json> objects_;
  int replaces_ = 0;
};

kube::ReflectorOptions fastOptions() {
  kube::ReflectorOptions o;
  o.collectionPath = "/api/v1/services";
  o.labelSelector = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";
  o.lease = 2000ms;
  o.minWatchTimeout = 30000ms;
  o.requestTimeout = 2000ms;
  o.connectTimeout = 500ms;
  o.backoffInitial = 10ms;
  o.backoffMax = 100ms;
  return o;
}

struct Harness {
  Mirror mirror;
  std::unique_ptr<kube::Reflector> reflector;

  Harness(std::vector<std::string> urls, kube::ClientConfig cfg = {},
          kube::ReflectorOptions options = fastOptions()) {
    std::vector<sluice::http::Url> parsed;
    for (const auto& u : urls) parsed.push_back(*sluice::http::parseUrl(u));
    cfg.servers = urls;
    reflector = std::make_unique<kube::Reflector>(
        std::make_shared<kube::ServerSet>(parsed), std::make_shared<kube::Credentials>(cfg),
        options, mirror);
    reflector->start();
  }
  kube::ReflectorStats stats() const { return reflector->stats(); }
};

std::vector<sluice::testing::RecordedRequest> lists(const ApiServer& s) {
  std::vector<sluice::testing::RecordedRequest> out;
  for (auto& r : s.requests())
    if (!r.query.count("watch")) out.push_back(r);
  return out;
}

}  // namespace

TEST_CASE("http: parseUrl accepts API server URLs and rejects the rest") {
  auto u = sluice::http::parseUrl("https://[fd00::1]:6443/prefix/");
  REQUIRE(u);
  CHECK(u->host == "fd00::1");
  CHECK(u->port == 6443);
  CHECK(u->basePath == "/prefix");
  CHECK(u->hostHeader() == "[fd00::1]:6443");
  CHECK(sluice::http::parseUrl("http://10.0.0.1")->port == 80);
  CHECK(sluice::http::parseUrl("https://api.example")->port == 443);
  CHECK_FALSE(sluice::http::parseUrl("ftp://x"));
  CHECK_FALSE(sluice::http::parseUrl("https://fd00::1:6443"));
  CHECK_FALSE(sluice::http::parseUrl("https://u:p@host"));
  CHECK_FALSE(sluice::http::parseUrl("https://host:70000"));
  CHECK_FALSE(sluice::http::parseUrl("https://host/?q=1"));
  CHECK_FALSE(sluice::http::parseUrl("https://:443"));
}

TEST_CASE("reflector: paginated initial list, kube-proxy selector, then watch events") {
  ApiServer server;
  for (int i = 0; i < 7; ++i) server.create("services", service("default", "svc" + std::to_string(i)));
  server.create("services", service("default", "headless", {{"service.kubernetes.io/headless", ""}}));
  server.create("services", service("default", "other", {{"service.kubernetes.io/service-proxy-name", "x"}}));
  server.start();
  auto options = fastOptions();
  options.pageSize = 3;
  Harness h({server.url()}, {}, options);
  REQUIRE(eventually([&] { return h.mirror.replaces() == 1; }));
  CHECK(h.mirror.size() == 7);
  CHECK_FALSE(h.mirror.has("default/headless"));
  auto ls = lists(server);
  REQUIRE(ls.size() == 3);
  CHECK(ls[0].query.at("limit") == "3");
  CHECK_FALSE(ls[0].query.count("continue"));
  CHECK(ls[1].query.count("continue"));
  for (auto& r : server.requests())
    CHECK(r.query.at("labelSelector") ==
          "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name");

  server.create("services", service("default", "new"));
  server.remove("services", "default", "svc0");
  REQUIRE(eventually([&] { return h.mirror.has("default/new") && !h.mirror.has("default/svc0"); }));
  // A label change that moves an object out of the selector arrives as a DELETED.
  server.update("services", service("default", "svc1", {{"service.kubernetes.io/headless", ""}}));
  REQUIRE(eventually([&] { return !h.mirror.has("default/svc1"); }));
  auto watches = server.requests();
  std::erase_if(watches, [](auto& r) { return !r.query.count("watch"); });
  REQUIRE(!watches.empty());
  CHECK(watches[0].query.at("allowWatchBookmarks") == "true");
  long t = std::stol(watches[0].query.at("timeoutSeconds"));
  CHECK(t >= 30);
  CHECK(t < 60);
  CHECK(h.stats().relists == 0);
}

TEST_CASE("reflector: a watch that ends normally resumes from the bookmark RV without relisting") {
  ApiServerOptions so;
  so.bookmarkInterval = 50ms;
  ApiServer server(so);
  server.create("services", service("default", "a"));
  server.start();
  auto options = fastOptions();
  options.minWatchTimeout = 1000ms;  // timeoutSeconds = 1: the server ends the watch after 1 s
  Harness h({server.url()}, {}, options);
  REQUIRE(eventually([&] { return h.mirror.replaces() == 1; }));
  // Writes to another resource move the RV on; bookmarks carry it to the client.
  for (int i = 0; i < 3; ++i) server.create("leases", service("default", "l" + std::to_string(i)));
  uint64_t rv = server.resourceVersion();
  auto watchRequests = [&] {
    auto reqs = server.requests();
    std::erase_if(reqs, [](auto& r) { return !r.query.count("watch"); });
    return reqs;
  };
  REQUIRE(eventually([&] { return watchRequests().size() >= 2; }, 6000ms));
  CHECK(h.stats().bookmarks >= 1);
  CHECK(h.stats().relists == 0);
  auto reqs = watchRequests();
  CHECK(reqs[1].query.at("resourceVersion") == std::to_string(rv));
  server.create("services", service("default", "b"));
  REQUIRE(eventually([&] { return h.mirror.has("default/b"); }));
}

TEST_CASE("reflector: 410 ERROR events (both wordings) lead to a relist") {
  for (bool etcdWording : {false, true}) {
    CAPTURE(etcdWording);
    ApiServerOptions so;
    so.etcdExpiredWording = etcdWording;
    ApiServer server(so);
    server.create("services", service("default", "a"));
    server.start();
    Harness h({server.url()});
    REQUIRE(eventually([&] { return h.mirror.replaces() == 1 && server.watchCount() == 1; }));
    // History ages out while the client is disconnected: its re-watch RV is too old.
    server.compact();
    server.setStall(true);
    server.create("services", service("default", "b"));
    server.remove("services", "default", "a");
    server.compact();
    server.setStall(false);
    server.cutWatches();
    REQUIRE(eventually([&] { return h.mirror.replaces() == 2; }));
    CHECK(h.stats().expired >= 1);
    CHECK(h.mirror.has("default/b"));
    CHECK_FALSE(h.mirror.has("default/a"));
  }
}

// A server can refuse a watch before the stream starts, with an HTTP status and a Status body
// that has a Content-Length. 410 must relist; 403/429 are that server's answer, not a reason to
// fail over (the second server here has no Services, so a failover would empty the mirror).
TEST_CASE("reflector: a watch refused with an HTTP status relists on 410 and does not fail over") {
  for (int code : {410, 403, 429}) {
    CAPTURE(code);
    ApiServer server, other;
    server.create("services", service("default", "a"));
    server.rejectWatches("services", code, 1);
    server.start();
    other.start();
    Harness h({server.url(), other.url()});
    REQUIRE(eventually([&] { return h.stats().errors >= 1 && server.watchCount() == 1; }));
    CHECK(h.stats().expired == (code == 410 ? 1u : 0u));
    CHECK(h.stats().relists == (code == 410 ? 1u : 0u));  // otherwise: re-watch from the same RV
    CHECK(h.stats().failovers == 0);
    CHECK(other.watchCount() == 0);
    server.create("services", service("default", "b"));
    REQUIRE(eventually([&] { return h.mirror.has("default/b"); }));
    CHECK(h.mirror.has("default/a"));
  }
}

TEST_CASE("reflector: a LIST answered 410 falls back to a consistent read") {
  ApiServerOptions so;
  so.listOldRvIs410 = true;
  ApiServer server(so);
  server.create("services", service("default", "a"));
  server.start();
  Harness h({server.url()});
  REQUIRE(eventually([&] { return h.mirror.replaces() == 1 && server.watchCount() == 1; }));
  std::string oldRv = std::to_string(server.resourceVersion());
  server.setStall(true);
  server.create("services", service("default", "b"));
  server.compact();
  server.setStall(false);
  server.cutWatches();
  REQUIRE(eventually([&] { return h.mirror.replaces() == 2; }));
  CHECK(h.mirror.has("default/b"));
  auto ls = lists(server);
  REQUIRE(ls.size() >= 3);
  // initial consistent list, relist at the last RV (410), then a consistent read again.
  CHECK(ls[ls.size() - 2].query.at("resourceVersion") == oldRv);
  CHECK_FALSE(ls.back().query.count("resourceVersion"));
  CHECK(h.stats().expired >= 2);
}

TEST_CASE("reflector: a stalled watch expires its lease and is replaced by a relist") {
  ApiServer server;
  server.create("services", service("default", "a"));
  server.start();
  auto options = fastOptions();
  options.lease = 200ms;
  Harness h({server.url()}, {}, options);
  REQUIRE(eventually([&] { return h.mirror.replaces() == 1 && server.watchCount() == 1; }));
  server.setStall(true);
  server.create("services", service("default", "b"));
  REQUIRE(eventually([&] { return h.stats().leaseExpiries >= 1; }));
  server.setStall(false);
  REQUIRE(eventually([&] { return h.mirror.has("default/b"); }));
  CHECK(h.stats().relists >= 1);
}

TEST_CASE("reflector: events split across chunks and a stream cut mid-event") {
  ApiServer server;
  server.start();
  server.setSplitEvents(true);
  Harness h({server.url()});
  REQUIRE(eventually([&] { return h.mirror.replaces() == 1 && server.watchCount() == 1; }));
  for (int i = 0; i < 5; ++i) server.create("services", service("ns", "s" + std::to_string(i)));
  REQUIRE(eventually([&] { return h.mirror.size() == 5; }));
  CHECK(h.stats().events == 5);
  server.cutWatches();
  REQUIRE(eventually([&] { return h.stats().watches >= 2 && server.watchCount() == 1; }));
  server.create("services", service("ns", "after-cut"));
  REQUIRE(eventually([&] { return h.mirror.has("ns/after-cut"); }));
  // Re-watched from the last RV: no relist was needed.
  CHECK(h.stats().relists == 0);
  CHECK(h.mirror.size() == 6);
}

TEST_CASE("reflector: fails over to the next server, its older RV falls back to a consistent read") {
  ApiServer a, b;
  a.create("services", service("default", "x"));
  for (int i = 0; i < 5; ++i) a.create("leases", service("default", "l" + std::to_string(i)));
  b.create("services", service("default", "x"));
  b.create("services", service("default", "only-on-b"));
  a.start();
  b.start();
  auto options = fastOptions();
  options.lease = 300ms;
  Harness h({a.url(), b.url()}, {}, options);
  REQUIRE(eventually([&] { return h.mirror.replaces() == 1; }));
  a.stop();  // a dies: connections reset, further connects refused
  REQUIRE(eventually([&] { return h.mirror.has("default/only-on-b"); }));
  CHECK(h.stats().failovers >= 1);
  auto ls = lists(b);
  REQUIRE(!ls.empty());
  // a's RV is ahead of b's: b answered 504 TooLarge, then the consistent read succeeded.
  CHECK_FALSE(ls.back().query.count("resourceVersion"));
}

TEST_CASE("reflector: bearer token auth, 401 and 403, token file rotation") {
  ApiServerOptions so;
  so.tokens = {"t1"};
  so.forbiddenTokens = {"nope"};
  ApiServer server(so);
  server.create("services", service("default", "a"));
  server.start();
  {
    kube::ClientConfig cfg;
    cfg.token = "wrong";
    Harness h({server.url()}, cfg);
    REQUIRE(eventually([&] { return h.stats().errors >= 2; }));
    CHECK(h.mirror.replaces() == 0);
  }
  {
    kube::ClientConfig cfg;
    cfg.token = "nope";
    Harness h({server.url()}, cfg);
    REQUIRE(eventually([&] { return h.stats().errors >= 2; }));
    CHECK(h.mirror.replaces() == 0);
  }
  std::string file = std::filesystem::temp_directory_path() / ("sluice-token-" + std::to_string(getpid()));
  std::ofstream(file) << "t1\n";
  kube::ClientConfig cfg;
  cfg.tokenFile = file;
  cfg.tokenFileReload = 0ms;
  Harness h({server.url()}, cfg);
  REQUIRE(eventually([&] { return h.mirror.replaces() == 1 && server.watchCount() == 1; }));
  CHECK(server.requests().back().authorization == "Bearer t1");
  // Rotation: the server accepts only the new token now; the file has it; the stream breaks.
  std::ofstream(file) << "t2\n";
  server.setTokens({"t2"});
  server.cutWatches();
  server.create("services", service("default", "b"));
  REQUIRE(eventually([&] { return h.mirror.has("default/b"); }));
  CHECK(server.requests().back().authorization == "Bearer t2");
  std::filesystem::remove(file);
}

TEST_CASE("http: TLS verification against a throw-away CA") {
  auto ca = sluice::testing::makeCa("sluice test CA");
  auto leaf = sluice::testing::issueCert(ca, "apiserver", {"IP:127.0.0.1", "DNS:kubernetes.default"});
  ApiServerOptions so;
  so.tls = true;
  so.certPem = leaf.certPem;
  so.keyPem = leaf.keyPem;
  ApiServer server(so);
  server.create("services", service("default", "a"));
  server.start();
  auto get = [&](sluice::http::TlsConfig tls) {
    sluice::http::ConnectionOptions o;
    o.url = *sluice::http::parseUrl(server.url());
    o.tls = tls;
    o.connectTimeout = 2000ms;
    sluice::http::Connection c(o);
    return c.roundTrip({"GET", "/api/v1/services", {}, ""}, 2000ms);
  };
  sluice::http::TlsConfig trusted;
  trusted.caData = ca.certPem;
  auto ok = get(trusted);
  REQUIRE(ok);
  CHECK(ok->status == 200);
  CHECK(json::parse(ok->body)["items"].size() == 1);

  auto untrusted = get({});  // system CAs do not know our CA
  CHECK_FALSE(untrusted);
  CHECK(untrusted.status().message().find("verify") != std::string::npos);

  sluice::http::TlsConfig insecure;
  insecure.insecureSkipVerify = true;
  CHECK(get(insecure));

  sluice::http::TlsConfig wrongName = trusted;
  wrongName.serverName = "other.example";
  CHECK_FALSE(get(wrongName));
  sluice::http::TlsConfig rightName = trusted;
  rightName.serverName = "kubernetes.default";
  CHECK(get(rightName));

  sluice::http::TlsConfig badCa;
  badCa.caData = "not a pem";
  auto bad = get(badCa);
  CHECK_FALSE(bad);
  CHECK(bad.status().code() == sluice::Code::kInvalidArgument);
}

TEST_CASE("http: stream idle timeout and cancel from another thread") {
  ApiServer server;
  server.start();
  server.setStall(true);
  sluice::http::ConnectionOptions o;
  o.url = *sluice::http::parseUrl(server.url());
  sluice::http::Connection c(o);
  auto idle = c.stream({"GET", "/api/v1/services?watch=1&resourceVersion=0", {}, ""}, 1000ms, 100ms,
                       [](std::string_view) { return true; });
  CHECK_FALSE(idle);
  CHECK(idle.status().message().find("idle timeout") != std::string::npos);
  std::thread canceller([&] {
    std::this_thread::sleep_for(50ms);
    c.cancel();
  });
  auto cancelled = c.stream({"GET", "/api/v1/services?watch=1", {}, ""}, 1000ms, 10000ms,
                            [](std::string_view) { return true; });
  canceller.join();
  CHECK(cancelled.status().code() == sluice::Code::kAborted);
  sluice::http::ConnectionOptions refused;
  refused.url = *sluice::http::parseUrl("http://127.0.0.1:1");
  sluice::http::Connection r(refused);
  auto res = r.roundTrip({"GET", "/", {}, ""}, 500ms);
  CHECK(res.status().code() == sluice::Code::kUnavailable);
}
