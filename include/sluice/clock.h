// sluice/clock.h — time, injected.
//
// Anything in sluice that judges time (lease expiry, renewal schedules) reads it through a
// Clock, so tests can step it and so the two kinds of time are never mixed up: the monotonic
// clock decides (it never jumps backwards and is not set by NTP or an operator), the wall clock
// only labels things for humans.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace sluice {

class Clock {
 public:
  using MonoTime = std::chrono::steady_clock::time_point;
  using WallTime = std::chrono::system_clock::time_point;

  virtual ~Clock() = default;
  // Monotonic time: the only time sluice makes decisions with.
  virtual MonoTime monotonicNow() const = 0;
  // Wall-clock time: for labels and logs only.
  virtual WallTime wallNow() const = 0;

  // The process's real clocks (steady_clock, system_clock). Stateless, so sharing it is safe.
  static const Clock& system();
};

// A clock tests move by hand. Thread-safe: it may be read by a source's thread while the test
// thread advances it.
class ManualClock final : public Clock {
 public:
  MonoTime monotonicNow() const override { return MonoTime(std::chrono::nanoseconds(mono_.load())); }
  WallTime wallNow() const override {
    return WallTime(std::chrono::duration_cast<WallTime::duration>(std::chrono::nanoseconds(wall_.load())));
  }

  // Moves both clocks forward by `d` (time passing).
  void advance(std::chrono::nanoseconds d) {
    mono_ += d.count();
    wall_ += d.count();
  }
  // Steps only the wall clock (an NTP step or an operator's `date -s`), either direction.
  void stepWall(std::chrono::nanoseconds d) { wall_ += d.count(); }

 private:
  // Nanoseconds since each clock's epoch; they start far from zero, like real clocks do.
  std::atomic<int64_t> mono_{int64_t{3600} * 1000 * 1000 * 1000 * 1000};
  std::atomic<int64_t> wall_{int64_t{1767225600} * 1000 * 1000 * 1000};  // 2026-01-01
};

}  // namespace sluice
