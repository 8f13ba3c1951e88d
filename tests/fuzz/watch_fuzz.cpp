// libFuzzer target: the watch-stream push parser, the LIST decoder and the object decoders.
// The first input byte chooses the chunk size: below 128, 1–64 bytes, so events straddle chunk
// boundaries at every offset; from 128, 64–8 192 bytes, so whole lines sit in one chunk and the
// fast path parses them in place. Every decoded event's object goes through the Service and
// EndpointSlice decoders. The EndpointSlice fast path (simdjson) must agree with the nlohmann DOM
// path on every input: same events, same slices, same problems, same stream status — a mismatch
// aborts.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "kube_decode.h"
#include "kube_watch.h"
#include "watch_equivalence.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t chunk = data[0] < 128 ? 1 + data[0] % 64 : 64 * size_t(data[0] - 127);
  std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  sluice::kube::WatchStreamDecoder decoder(1 << 16);
  std::vector<sluice::kube::WatchEvent> events;
  for (size_t pos = 0; pos < body.size(); pos += chunk)
    if (!decoder.feed(body.substr(pos, chunk), events).isOk()) break;
  (void)decoder.finish(events);
  for (const auto& ev : events) {
    (void)sluice::kube::decodeService(ev.object);
    (void)sluice::kube::decodeEndpointSlice(ev.object);
    (void)sluice::kube::decodeEndpoints(ev.object);
  }
  auto list = sluice::kube::decodeList(body);
  if (list)
    for (const auto& item : list->items) (void)sluice::kube::decodeEndpointSlice(item);

  using sluice::kube::WatchObjects;
  auto dom = sluice::testing::decodeSliceStream(body, WatchObjects::kJson, chunk, 1 << 16);
  auto fast = sluice::testing::decodeSliceStream(body, WatchObjects::kEndpointSlices, chunk, 1 << 16);
  if (!(dom == fast)) {
    std::fprintf(stderr, "watch_fuzz: the EndpointSlice fast path disagrees with the DOM path\n");
    std::abort();
  }
  return 0;
}
