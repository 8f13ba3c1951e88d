// sluice/conntrack.h — reading and deleting the kernel's connection-tracking entries.
//
// Three users drive this API: connection draining (count the live flows still answered by an
// endpoint), the UDP stale-entry reconciler (delete entries whose original destination is a
// Service IP/port but whose reply source is no longer a serving endpoint, spec §5) and the
// diagnostics tool (who uses which SNAT port). Flows are plain values; Filter is a pure
// predicate over them, so selection logic is unit-testable without a kernel.
//
// Only TCP, UDP and SCTP entries are reported: those are the protocols a Service can carry.
// Entries of other protocols (ICMP, GRE, ...) are skipped by dump() and therefore never
// counted or deleted by this API.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "sluice/ip.h"
#include "sluice/model.h"
#include "sluice/status.h"

namespace sluice::conntrack {

// Entry status bits (IPS_* of linux/netfilter/nf_conntrack_common.h; kernel ABI, stable).
inline constexpr uint32_t kStatusExpected = 1u << 0;
inline constexpr uint32_t kStatusSeenReply = 1u << 1;
inline constexpr uint32_t kStatusAssured = 1u << 2;
inline constexpr uint32_t kStatusConfirmed = 1u << 3;
inline constexpr uint32_t kStatusSrcNat = 1u << 4;
inline constexpr uint32_t kStatusDstNat = 1u << 5;
inline constexpr uint32_t kStatusDying = 1u << 9;
inline constexpr uint32_t kStatusOffload = 1u << 14;

// One direction of a flow as the kernel keys it.
struct Tuple {
  IPAddress src;
  IPAddress dst;
  uint16_t srcPort = 0;
  uint16_t dstPort = 0;
  Protocol proto = Protocol::kTCP;

  IPFamily family() const { return src.family(); }
  // "tcp 198.18.0.1:40000 -> 198.18.0.2:80", "udp [fd00::1]:53 -> [fd00::2]:5300"
  std::string toString() const;
  bool operator==(const Tuple&) const = default;
};

// One conntrack entry. `original` is the tuple of the first packet (client → Service IP);
// `reply` is what the answer looks like (endpoint → client, or → the SNAT address), so after
// DNAT reply.src is the endpoint and after SNAT reply.dst is the translated source.
struct Flow {
  Tuple original;
  Tuple reply;
  uint32_t status = 0;  // kStatus* bits
  uint32_t mark = 0;
  uint32_t timeoutSeconds = 0;  // left until the kernel expires the entry
  // The kernel's id for this entry. remove() passes it back so that a newer entry that reuses
  // the same tuple is never deleted by mistake; 0 = unknown, delete by tuple alone.
  uint64_t id = 0;
  uint16_t zone = 0;  // conntrack zone; 0 = the default zone
  // TCP state as conntrack names it ("SYN_SENT", "ESTABLISHED", "TIME_WAIT", ...); empty if
  // the flow is not TCP.
  std::string tcpState;

  IPFamily family() const { return original.family(); }
  Protocol proto() const { return original.proto; }
  bool assured() const { return (status & kStatusAssured) != 0; }
  bool srcNat() const { return (status & kStatusSrcNat) != 0; }
  bool dstNat() const { return (status & kStatusDstNat) != 0; }
  // A TCP flow whose connection is over (TIME_WAIT or CLOSE): it still occupies an entry
  // until it times out, but carries no traffic, so draining need not wait for it.
  bool tcpClosed() const;
  std::string toString() const;
  bool operator==(const Flow&) const = default;
};

// A conjunction of optional conditions over a Flow; an unset condition matches everything,
// so Filter{} matches every flow.
struct Filter {
  std::optional<IPFamily> family;
  std::optional<Protocol> proto;
  std::optional<uint16_t> zone;

  std::optional<IPAddress> origSrc;
  std::optional<uint16_t> origSrcPort;
  std::optional<IPAddress> origDst;  // e.g. the Service IP
  std::optional<uint16_t> origDstPort;  // e.g. the Service port or NodePort
  std::optional<IPAddress> replySrc;  // e.g. the endpoint IP (after DNAT)
  std::optional<uint16_t> replySrcPort;  // e.g. the endpoint port
  std::optional<IPAddress> replyDst;  // e.g. the SNAT address
  std::optional<uint16_t> replyDstPort;  // e.g. the SNAT port

  // Matches flows whose reply source is NOT in the set: "answered by something that is no
  // longer a serving endpoint". An empty set matches every flow (a Service whose last serving
  // endpoint left must still lose its entries — kube-proxy once skipped that case and kept
  // one-way UDP senders black-holed).
  std::optional<std::unordered_set<IPAddress>> replySrcNotIn;

  // (flow.mark & markMask) == *mark
  std::optional<uint32_t> mark;
  uint32_t markMask = 0xffffffff;

  uint32_t statusSet = 0;    // every one of these kStatus* bits must be set
  uint32_t statusClear = 0;  // none of these kStatus* bits may be set

  // Skip TCP flows that are already over (Flow::tcpClosed()): count only live connections.
  bool excludeClosedTcp = false;

  bool matches(const Flow& flow) const;
};

// The entries that carry traffic to one backend: flows DNATed to it (reply source = backend,
// e.g. through a Service) and flows addressed to it directly (original destination = backend,
// not DNATed elsewhere); optionally only those of Service address `vip` (and `port`), or of one
// protocol. What `sluice-ct flush-backend` deletes, and a building block for endpoint cleanup.
struct BackendSelector {
  IPAddress backend;
  std::optional<IPAddress> vip;     // original destination (the Service IP)
  std::optional<uint16_t> vipPort;  // original destination port; only with vip
  std::optional<Protocol> proto;

  bool matches(const Flow& flow) const;
};

// A conntrack netlink client bound to one network namespace for its whole life. Not
// thread-safe: use one Client per thread (each owns its own sockets).
class Client {
 public:
  // Opens the conntrack netlink sockets inside network namespace `netns` ("" = the caller's;
  // otherwise a name under /run/netns, a path, or a PID, as sluice::netnsPath). A cheap probe
  // request checks that the caller may use conntrack there.
  // Errors: NotFound if the namespace does not exist; PermissionDenied (naming CAP_NET_ADMIN,
  // or CAP_SYS_ADMIN to enter another namespace) when not permitted.
  static Result<std::unique_ptr<Client>> open(const std::string& netns = "");

  ~Client();
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const std::string& netns() const { return netns_; }

  // Every TCP/UDP/SCTP entry of `family`, from one consistent dump: a dump the kernel marks
  // interrupted is repeated (bounded; Aborted if it never completes), and an entry the kernel
  // sends twice (it can re-walk a hash bucket when its resume point vanished) is reported once.
  // Read-only.
  Result<std::vector<Flow>> dump(IPFamily family);
  // The entries matching `filter`; both families unless filter.family is set. The mark and
  // family conditions are also handed to the kernel so it sends less.
  Result<std::vector<Flow>> dump(const Filter& filter);
  // How many entries match `filter` (one dump per family). Read-only.
  Result<size_t> count(const Filter& filter);
  // For each filter, how many entries match it, from one dump per family: what draining needs
  // for many endpoints at once. O(entries × filters).
  Result<std::vector<size_t>> count(const std::vector<Filter>& filters);

  // Deletes the entry `flow` (looked up by its original tuple and zone; if flow.id is set, only
  // that very entry). Idempotent: an entry that is already gone is success.
  Status remove(const Flow& flow);
  // Deletes every entry matching `filter` and returns how many this call deleted. Streams one
  // dump per family and deletes on a second socket as entries arrive, so memory stays flat on
  // large tables. Entries that vanish on their own meanwhile are success but not counted.
  // On a failed delete the dump is still drained (so the client stays usable) and the first
  // error is returned.
  Result<size_t> removeMatching(const Filter& filter);
  // Like removeMatching for an arbitrary predicate, e.g. one backed by a hash index of many
  // Services so a full reconcile stays O(entries). `family` unset = both families.
  Result<size_t> removeIf(std::optional<IPFamily> family,
                          const std::function<bool(const Flow&)>& predicate);

  // A moved-from Client may only be destroyed or assigned to; its calls fail with
  // FailedPrecondition.

 private:
  struct Impl;  // the libnetfilter_conntrack handles; defined in conntrack.cpp
  Client(std::string netns, std::unique_ptr<Impl> impl);

  std::string netns_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice::conntrack
