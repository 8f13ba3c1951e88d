// The embedded store's HTTP API (what sluiced serves on --lease-bind-address) over real
// sockets: the four calls, authentication, bad requests, and registrants in "other processes"
// (HttpLeaseStore clients) whose endpoints the reconciler publishes and expires.
#include <doctest/doctest.h>

#include "../lease_helpers.h"
#include "sluice/http_client.h"
#include "sluice/lease_http.h"

using namespace sluice;
using namespace sluice::testing;
using namespace std::chrono_literals;

namespace {

struct ApiRig {
  EmbeddedLeaseStore store;
  HttpServer server{HttpServerOptions{}};
  std::string url;

  ApiRig() {
    REQUIRE(serveLeaseApi(server, store, "s3cret").isOk());
    REQUIRE(server.start().isOk());
    url = "http://" + server.boundAddress();
  }
  std::unique_ptr<HttpLeaseStore> client(const std::string& token = "s3cret") {
    auto c = HttpLeaseStore::create({url, token, 1000ms});
    REQUIRE(c.isOk());
    return std::move(c).value();
  }
  // A raw request, for what the typed client never sends.
  http::Response raw(const std::string& method, const std::string& target, const std::string& body,
                     const std::string& token = "s3cret") {
    http::ConnectionOptions o;
    o.url = http::parseUrl(url).value();
    http::Connection conn(o);
    http::Request req;
    req.method = method;
    req.target = target;
    req.body = body;
    if (!token.empty()) req.headers.emplace_back("Authorization", "Bearer " + token);
    auto res = conn.roundTrip(req, 1000ms);
    REQUIRE(res.isOk());
    return *res;
  }
};

}  // namespace

TEST_CASE("lease HTTP API: acquire, renew, list, release through the embedded store") {
  ApiRig rig;
  auto c = rig.client();
  LeaseSpec spec = leaseSpec("agent-1", "198.18.2.11", 8080, 5s);
  spec.nodeName = "node-1";
  spec.zone = "z1";
  spec.ports.push_back({"dns", Protocol::kUDP, 53});
  const auto t0 = Clock::WallTime(std::chrono::milliseconds(1795000000123));

  auto h = c->acquire(spec, t0);
  REQUIRE_MESSAGE(h.isOk(), h.status().toString());
  CHECK(h->ttl == 5s);
  // The store behind the API holds exactly what was sent.
  auto local = rig.store.list();
  REQUIRE(local->leases.size() == 1);
  CHECK(local->leases[0].spec == spec);
  CHECK(local->leases[0].renewTime == t0);

  REQUIRE(c->renew(*h, t0 + 1s).isOk());
  CHECK(h->generation == 2);
  auto listing = c->list();
  REQUIRE(listing.isOk());
  REQUIRE(listing->leases.size() == 1);
  CHECK(listing->leases[0].spec == spec);
  CHECK(listing->leases[0].generation == 2);
  CHECK(listing->leases[0].leaseId == h->leaseId);

  // A second acquire supersedes the first: the old handle is refused with 404 → kNotFound.
  auto h2 = c->acquire(spec, t0);
  REQUIRE(h2.isOk());
  CHECK(c->renew(*h, t0).code() == Code::kNotFound);
  CHECK(c->release(*h).isOk());  // leaves the newer lease alone
  CHECK(rig.store.list()->leases.size() == 1);
  CHECK(c->release(*h2).isOk());
  CHECK(rig.store.list()->leases.empty());
  CHECK(c->release(*h2).isOk());  // idempotent
}

TEST_CASE("lease HTTP API: authentication and bad requests") {
  ApiRig rig;
  CHECK(serveLeaseApi(rig.server, rig.store, "").code() == Code::kInvalidArgument);
  auto wrong = rig.client("guess");
  CHECK(wrong->list().status().code() == Code::kPermissionDenied);
  CHECK(wrong->acquire(leaseSpec("a", "198.18.2.11", 80, 1s), Clock::WallTime{}).status().code() ==
        Code::kPermissionDenied);
  CHECK(rig.store.list()->leases.empty());
  CHECK(rig.raw("GET", "/v1/leases", "", "").status == 401);
  CHECK(rig.raw("PUT", "/v1/leases/a", "{\"address\":\"nope\",\"ttlMs\":1000}").status == 400);
  CHECK(rig.raw("PUT", "/v1/leases/a", "{\"identity\":\"b\",\"address\":\"198.18.2.1\",\"ttlMs\":1000}").status == 400);
  CHECK(rig.raw("PUT", "/v1/leases/a", "{\"address\":\"198.18.2.1\",\"ttlMs\":0}").status == 400);
  CHECK(rig.raw("POST", "/v1/leases/a/renew", "[]").status == 400);
  CHECK(rig.raw("POST", "/v1/leases/a/renew", "{\"leaseId\":7}").status == 404);
  CHECK(rig.raw("DELETE", "/v1/leases/a", "").status == 400);  // ?lease= missing
  CHECK(rig.raw("GET", "/v1/other", "").status == 404);
  CHECK(rig.raw("PUT", "/v1/leases/a/b/c", "{}").status == 404);
  CHECK(rig.store.list()->leases.empty());
}

TEST_CASE("lease HTTP API: registrants over HTTP, one stops renewing and leaves, the other stays") {
  ApiRig rig;
  auto c1 = rig.client();
  auto c2 = rig.client();
  LeaseRegistrant a(*c1, leaseSpec("a", "198.18.2.11", 8080, 400ms));
  LeaseRegistrant b(*c2, leaseSpec("b", "198.18.2.12", 8080, 400ms));
  REQUIRE(a.start().isOk());
  REQUIRE(b.start().isOk());
  LeaseReconcilerConfig rc;
  rc.service = {"default", "web"};
  rc.interval = 100ms;
  LeaseSource source(rig.store, rc);
  RecordingSink sink;
  REQUIRE(source.start(sink).isOk());
  REQUIRE(sink.waitForAddresses({"198.18.2.11", "198.18.2.12"}, 3s));

  b.stop(false);  // as if killed: no release
  CHECK(sink.waitForAddresses({"198.18.2.11"}, 3s));
  CHECK(a.holding());
  CHECK(a.renewals() > 0);
  CHECK_FALSE(sink.everPublishedEmpty());
  source.stop();
  a.stop();
}
