#include <doctest/doctest.h>

#include <random>

#include "fixtures.h"
#include "kube_decode.h"
#include "kube_watch.h"

using namespace sluice;
using namespace sluice::kube;
using sluice::testing::fixtureJson;
using sluice::testing::readFixture;

namespace {

std::vector<WatchEvent> feedInPieces(const std::string& body, size_t maxPiece, unsigned seed) {
  std::mt19937 rng(seed);
  WatchStreamDecoder d;
  std::vector<WatchEvent> out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t n = std::uniform_int_distribution<size_t>(1, maxPiece)(rng);
    n = std::min(n, body.size() - pos);
    REQUIRE(d.feed(std::string_view(body).substr(pos, n), out).isOk());
    pos += n;
  }
  REQUIRE(d.finish(out).isOk());
  return out;
}

}  // namespace

TEST_CASE("kube watch: the synthesized EndpointSlice stream, split anywhere") {
  const std::string body = readFixture("k8s/synthesized/watch.endpointslices.stream.jsonl");
  for (size_t maxPiece : {size_t(1), size_t(7), size_t(100), size_t(4096), body.size()}) {
    CAPTURE(maxPiece);
    auto events = feedInPieces(body, maxPiece, 42 + maxPiece);
    REQUIRE(events.size() == 5);
    CHECK(events[0].type == WatchEventType::kAdded);
    CHECK(events[0].resourceVersion == "10596");
    CHECK(events[1].type == WatchEventType::kModified);
    CHECK(events[1].resourceVersion == "11020");
    CHECK(events[2].type == WatchEventType::kBookmark);
    CHECK(events[2].resourceVersion == "12746");
    CHECK_FALSE(events[2].initialEventsEnd);
    CHECK(events[3].type == WatchEventType::kDeleted);
    CHECK(events[3].resourceVersion == "12801");
    CHECK(events[4].type == WatchEventType::kError);
    REQUIRE(events[4].error);
    CHECK(events[4].error->expired());
    CHECK(events[4].error->code == 410);
    CHECK(events[4].resourceVersion.empty());
    // The objects decode into model values.
    auto slice = decodeEndpointSlice(events[1].object);
    REQUIRE(slice);
    CHECK(slice.value->endpoints.size() == 2);
  }
}

TEST_CASE("kube watch: 410 in both message forms is Expired") {
  const std::string body = readFixture("k8s/captured/watch.error-410-expired.jsonl");
  auto events = feedInPieces(body, 13, 1);
  REQUIRE(events.size() == 2);
  for (const auto& e : events) {
    CHECK(e.type == WatchEventType::kError);
    REQUIRE(e.error);
    CHECK(e.error->expired());
    CHECK(e.error->reason == "Expired");
  }
  CHECK(events[0].error->message == "too old resource version: 657887 (680402)");
  CHECK(events[1].error->message == "The resourceVersion for the provided watch is too old.");
  CHECK(events[0].error->toString() == "410 Expired: too old resource version: 657887 (680402)");
  // Pre-1.18 servers: reason Gone.
  auto gone = decodeWatchEvent(R"({"type":"ERROR","object":{"kind":"Status","reason":"Gone","code":410,"message":"x"}})");
  REQUIRE(gone);
  CHECK(gone->error->expired());
  // Other errors are not.
  auto notFound = decodeApiStatus(fixtureJson("k8s/captured/status.404-notfound.json"));
  CHECK_FALSE(notFound.expired());
  CHECK(notFound.code == 404);
  auto tooLarge = decodeApiStatus(fixtureJson("k8s/synthesized/status.504-too-large-resource-version.json"));
  CHECK(tooLarge.resourceVersionTooLarge());
  CHECK(tooLarge.retryAfterSeconds == 1);
  CHECK_FALSE(tooLarge.expired());
  CHECK(decodeApiStatus(fixtureJson("k8s/captured/status.410-expired-list.json")).expired());
}

TEST_CASE("kube watch: bookmarks, real and synthesized") {
  std::vector<WatchEvent> events;
  WatchStreamDecoder d;
  for (const char* f : {"k8s/captured/watch.bookmark.real-lines.jsonl", "k8s/synthesized/watch.bookmark.endpointslice.jsonl",
                        "k8s/synthesized/watch.bookmark.service.jsonl"})
    REQUIRE(d.feed(readFixture(f), events).isOk());
  REQUIRE(events.size() == 7);
  for (const auto& e : events) CHECK(e.type == WatchEventType::kBookmark);
  CHECK(events[0].resourceVersion == "3845");
  CHECK(events[1].resourceVersion == "1");
  CHECK_FALSE(events[2].initialEventsEnd);
  CHECK(events[4].initialEventsEnd);
  CHECK(events[4].resourceVersion == "10245");
  CHECK(events[6].initialEventsEnd);
  CHECK(d.eventsDecoded() == 7);
}

TEST_CASE("kube watch: captured TKE line without trailing newline, blank lines and CRLF") {
  std::string line = readFixture("k8s/captured/endpointslice.tke-2023.watch-added.jsonl");
  while (!line.empty() && line.back() == '\n') line.pop_back();
  WatchStreamDecoder d;
  std::vector<WatchEvent> out;
  REQUIRE(d.feed("\n\r\n" + line, out).isOk());
  CHECK(out.empty());  // not terminated yet
  REQUIRE(d.finish(out).isOk());
  REQUIRE(out.size() == 1);
  CHECK(out[0].resourceVersion == "5493506153");
  // managedFields is dropped while parsing; the rest of metadata is kept.
  CHECK_FALSE(out[0].object["metadata"].contains("managedFields"));
  CHECK(out[0].object["metadata"]["labels"]["kubernetes.io/service-name"] == "externalnode-proxy");

  WatchStreamDecoder crlf;
  out.clear();
  REQUIRE(crlf.feed(line + "\r\n" + line + "\r\n", out).isOk());
  CHECK(out.size() == 2);
}

TEST_CASE("kube watch: malformed streams fail and stay failed") {
  const std::string good = R"({"type":"ADDED","object":{"metadata":{"resourceVersion":"5"}}})";
  struct Case {
    std::string line;
    const char* reason;
  };
  std::vector<Case> cases = {
      {"{not json", "not valid JSON"},
      {"[1,2]", "not a JSON object"},
      {R"({"object":{}})", "no \"type\""},
      {R"({"type":"SYNC","object":{}})", "unknown event type \"SYNC\""},
      {R"({"type":"ADDED"})", "no \"object\""},
      {R"({"type":"ADDED","object":[]})", "no \"object\""},
  };
  for (const auto& c : cases) {
    CAPTURE(c.line);
    WatchStreamDecoder d;
    std::vector<WatchEvent> out;
    Status s = d.feed(good + "\n" + c.line + "\n" + good + "\n", out);
    CHECK(s.code() == Code::kInvalidArgument);
    CHECK(s.message().find(c.reason) != std::string::npos);
    CHECK(s.message().find("watch event 1") != std::string::npos);
    CHECK(out.size() == 1);  // the event before the bad one was delivered
    CHECK_FALSE(d.feed(good + "\n", out).isOk());
    CHECK(out.size() == 1);
  }
  SUBCASE("stream cut inside an event") {
    WatchStreamDecoder d;
    std::vector<WatchEvent> out;
    REQUIRE(d.feed(good.substr(0, 20), out).isOk());
    Status s = d.finish(out);
    CHECK_FALSE(s.isOk());
    CHECK(s.message().find("stream ended inside an event") != std::string::npos);
  }
  SUBCASE("an event longer than the limit") {
    WatchStreamDecoder d(64);
    std::vector<WatchEvent> out;
    CHECK(d.feed(std::string(40, ' '), out).isOk());
    CHECK(d.feed(std::string(40, ' '), out).code() == Code::kResourceExhausted);
  }
}

TEST_CASE("kube watch: LIST responses") {
  auto list = decodeList(readFixture("k8s/captured/endpointslicelist.kind-2020.json"));
  REQUIRE(list);
  CHECK(list->resourceVersion == "1177");
  CHECK(list->continueToken.empty());
  REQUIRE(list->items.size() == 2);
  CHECK(decodeEndpointSlice(list->items[1]));

  auto page = decodeList(readFixture("k8s/synthesized/endpointslicelist.paginated-page1.json"));
  REQUIRE(page);
  CHECK(page->resourceVersion == "12000");
  CHECK(page->continueToken.rfind("eyJ2Ijoi", 0) == 0);
  CHECK(page->items.size() == 1);

  auto empty = decodeList(readFixture("k8s/synthesized/endpointslicelist.empty.json"));
  REQUIRE(empty);
  CHECK(empty->items.empty());

  auto services = decodeList(readFixture("k8s/captured/servicelist.minikube-2020.json"));
  REQUIRE(services);
  CHECK(decodeService(services->items[0]));

  auto status = decodeList(readFixture("k8s/captured/status.410-expired-list.json"));
  CHECK_FALSE(status);
  CHECK(status.status().message().find("410 Expired") != std::string::npos);
  CHECK_FALSE(decodeList("{").isOk());
  CHECK_FALSE(decodeList(R"({"metadata":{}, "items":[]})").isOk());
  CHECK_FALSE(decodeList(R"({"metadata":{"resourceVersion":"1"}, "items":{}})").isOk());
}
