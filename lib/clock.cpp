// The process's real clocks.
#include "sluice/clock.h"

namespace sluice {
namespace {

class SystemClock final : public Clock {
 public:
  MonoTime monotonicNow() const override { return std::chrono::steady_clock::now(); }
  WallTime wallNow() const override { return std::chrono::system_clock::now(); }
};

}  // namespace

const Clock& Clock::system() {
  static const SystemClock kClock;  // stateless: immutable shared state only
  return kClock;
}

}  // namespace sluice
