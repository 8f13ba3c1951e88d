// libFuzzer target: the manifest parser (YAML → JSON conversion, documents, lists, decoders).
// The first input byte picks the syntax the file name implies.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "sluice/file_source.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  (void)sluice::parseManifests(text, data[0] & 1 ? "fuzz.json" : "fuzz.yaml");
  return 0;
}
