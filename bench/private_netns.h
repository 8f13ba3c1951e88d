// Kernel benchmarks run in a network namespace of their own, created with unshare() on a
// private thread and gone when its last socket closes, so nothing touches the caller's
// namespace. Without CAP_SYS_ADMIN/CAP_NET_ADMIN the benchmark is skipped with a message.
#pragma once

#include <benchmark/benchmark.h>
#include <sched.h>

#include <string>
#include <thread>

#include "sluice/nft/backend.h"

namespace sluice::bench {

// Runs `fn(backend)` on a thread inside a fresh, unnamed network namespace.
template <typename Fn>
bool inPrivateNetns(benchmark::State& state, Fn&& fn) {
  std::string error;
  std::thread t([&] {
    if (unshare(CLONE_NEWNET) != 0) {
      error = "unshare(CLONE_NEWNET) failed (needs CAP_SYS_ADMIN)";
      return;
    }
    auto backend = nft::NetlinkBackend::open({});
    if (!backend) {
      error = backend.status().toString();
      return;
    }
    fn(**backend);
  });
  t.join();
  if (!error.empty()) state.SkipWithError(error.c_str());
  return error.empty();
}

}  // namespace sluice::bench
