// libFuzzer target: the watch-stream push parser, the LIST decoder and the object decoders.
// The first input byte chooses the chunk size, so events straddle chunk boundaries at every
// offset; every decoded event's object goes through the Service and EndpointSlice decoders.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kube_decode.h"
#include "kube_watch.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t chunk = 1 + data[0] % 64;
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
  return 0;
}
