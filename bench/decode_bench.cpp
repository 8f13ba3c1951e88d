// decode_bench — P7: watch-stream decoding of EndpointSlice events into model values.
//
// The events are the captured TKE EndpointSlice watch line (controller-managed, with
// managedFields, as a real apiserver sends it) grown to N endpoints, each a distinct pod with
// targetRef, nodeName and zone — the shape the EndpointSlice controller writes. The body is
// fed in 16 KiB pieces (a typical TLS record/read size), so events straddle chunk boundaries.
// Counter "items_per_second" = events per second on one core; target ≥ 100 000/s. The Dom
// variant is the reference path (nlohmann, the baseline), the other the simdjson fast path the
// Kubernetes source uses; results in bench/results/decode.md.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <fstream>
#include <sstream>
#include <string>

#include "kube_decode.h"
#include "kube_watch.h"

namespace {

using json = nlohmann::json;

json baseEvent() {
  std::ifstream in(std::string(SLUICE_FIXTURES_DIR) + "/k8s/captured/endpointslice.tke-2023.watch-added.jsonl");
  std::stringstream s;
  s << in.rdbuf();
  return json::parse(s.str());
}

// A watch body of `events` MODIFIED events of slices with `endpoints` endpoints each.
std::string makeBody(int events, int endpoints) {
  json ev = baseEvent();
  ev["type"] = "MODIFIED";
  json& obj = ev["object"];
  json proto = obj["endpoints"][0];
  obj["endpoints"] = json::array();
  for (int i = 0; i < endpoints; ++i) {
    json e = proto;
    e["addresses"] = {fmt::format("10.{}.{}.{}", 244 + i / 65536 % 8, i / 256 % 256, i % 256)};
    e["targetRef"]["name"] = fmt::format("externalnode-proxy-56c4d977d8-{:05d}", i);
    e["nodeName"] = fmt::format("10.0.{}.{}", i / 250, i % 250 + 1);
    obj["endpoints"].push_back(std::move(e));
  }
  std::string body;
  for (int i = 0; i < events; ++i) {
    obj["metadata"]["resourceVersion"] = std::to_string(5493506153 + i);
    body += ev.dump();
    body += '\n';
  }
  return body;
}

// One watch body through a WatchStreamDecoder making `objects`, every event into a model value
// (the DOM path's events through decodeEndpointSlice, as the Kubernetes source does).
void decodeStream(benchmark::State& state, sluice::kube::WatchObjects objects) {
  const int kEvents = 1000;
  const std::string body = makeBody(kEvents, static_cast<int>(state.range(0)));
  const size_t kChunk = 16 * 1024;
  size_t slices = 0;
  std::vector<sluice::kube::WatchEvent> events;
  for (auto _ : state) {
    sluice::kube::WatchStreamDecoder decoder(64u << 20, objects);
    for (size_t pos = 0; pos < body.size(); pos += kChunk) {
      events.clear();
      auto s = decoder.feed(std::string_view(body).substr(pos, kChunk), events);
      if (!s.isOk()) state.SkipWithError(s.toString().c_str());
      for (auto& ev : events) {
        if (ev.slice) {
          ++slices;
          benchmark::DoNotOptimize(ev.slice);
          continue;
        }
        auto d = sluice::kube::decodeEndpointSlice(ev.object);
        slices += d.value ? 1 : 0;
        benchmark::DoNotOptimize(d);
      }
    }
  }
  if (slices != static_cast<size_t>(kEvents) * state.iterations()) state.SkipWithError("an event did not decode");
  state.SetItemsProcessed(static_cast<int64_t>(kEvents) * state.iterations());
  state.SetBytesProcessed(static_cast<int64_t>(body.size()) * state.iterations());
  state.counters["event_bytes"] = static_cast<double>(body.size()) / kEvents;
}

// The reference path: nlohmann DOM per event, then decodeEndpointSlice (the baseline).
void BM_WatchDecodeEndpointSlicesDom(benchmark::State& state) {
  decodeStream(state, sluice::kube::WatchObjects::kJson);
}
BENCHMARK(BM_WatchDecodeEndpointSlicesDom)->Arg(1)->Arg(10)->Arg(100)->Unit(benchmark::kMillisecond);

// What the Kubernetes source runs: the simdjson fast path straight into EndpointSlice values.
void BM_WatchDecodeEndpointSlices(benchmark::State& state) {
  decodeStream(state, sluice::kube::WatchObjects::kEndpointSlices);
}
BENCHMARK(BM_WatchDecodeEndpointSlices)->Arg(1)->Arg(10)->Arg(100)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
