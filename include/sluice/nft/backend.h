// sluice/nft/backend.h — where transactions run: the kernel (over netlink) or the shipped fake.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sluice/nft/transaction.h"
#include "sluice/status.h"

namespace sluice::nft {

class Backend {
 public:
  virtual ~Backend() = default;
  // Applies every operation of `tx` or none. On failure the Status names the failing operation
  // (Status::opIndex) and carries the kernel's extended-ACK text. Applying an empty transaction
  // is a no-op that succeeds.
  [[nodiscard]] virtual Status apply(const Transaction& tx) = 0;
  // The nftables ruleset generation (NFTA_GEN_ID) the last successful apply() committed, if
  // the backend knows it (the kernel's does; the fake has none). A drift monitor that stopped
  // listening around sluice's own commits uses it to tell them from anyone else's.
  virtual std::optional<uint32_t> lastGeneration() const { return std::nullopt; }
  // The ruleset generation now, if the backend can tell (nullopt: unknown, or asking failed).
  // Equal to lastGeneration(): nobody has committed anything since, so the ruleset is exactly
  // what that apply() left.
  virtual std::optional<uint32_t> currentGeneration() { return std::nullopt; }
};

struct NetlinkOptions {
  // Network namespace to open the netlink socket in: "" (the caller's), a name under
  // /run/netns, or a path such as /proc/PID/ns/net.
  std::string netns;
};

// The byte pipe under NetlinkBackend: a NETLINK_NETFILTER socket in production, a scripted
// peer in encoding tests (sequence/ACK/error mapping without a kernel).
class NetlinkTransport {
 public:
  virtual ~NetlinkTransport() = default;
  // Sends one batch with one sendmsg.
  virtual Status send(const uint8_t* data, size_t len) = 0;
  // Receives queued replies: bytes read, 0 if nothing arrived within `timeoutMs` (0 = do not
  // wait), or an error (ENOBUFS when replies were dropped).
  virtual Result<size_t> receive(uint8_t* buf, size_t cap, int timeoutMs) = 0;
  // Called before a batch of `batchBytes` expecting `replies` replies, to size socket buffers.
  virtual void reserve(size_t batchBytes, size_t replies) { (void)batchBytes, (void)replies; }
  // The socket's netlink port id (0 if it has none): the kernel stamps it on the ruleset
  // notifications a batch causes, which is how a drift monitor tells its own commits apart.
  virtual uint32_t portId() const { return 0; }
};

// The kernel backend on libnftnl + libmnl. Not thread-safe; one per owner.
class NetlinkBackend : public Backend {
 public:
  static Result<std::unique_ptr<NetlinkBackend>> open(const NetlinkOptions& opts = {});
  // Over another transport (tests).
  static std::unique_ptr<NetlinkBackend> withTransport(std::unique_ptr<NetlinkTransport> transport);
  ~NetlinkBackend() override;
  Status apply(const Transaction& tx) override;
  // Learnt from the NEWGEN message the kernel echoes to the sender: every batch asks for it
  // (NLM_F_ECHO on its first command). Empty after a failed or empty apply.
  std::optional<uint32_t> lastGeneration() const override { return lastGeneration_; }
  // Asks the kernel for the current ruleset generation (NFT_MSG_GETGEN) on this socket.
  Result<uint32_t> generation();
  std::optional<uint32_t> currentGeneration() override {
    auto g = generation();
    return g ? std::optional<uint32_t>(*g) : std::nullopt;
  }

  // Statistics of the last apply, for benchmarks and metrics.
  struct Stats {
    size_t messages = 0;  // netlink messages in the batch (without begin/end)
    size_t bytes = 0;     // batch size
    size_t acks = 0;      // replies drained
  };
  const Stats& lastStats() const { return stats_; }
  // Netlink port id of the socket batches are sent on (see NetlinkTransport::portId).
  uint32_t portId() const;

  // Encodes `tx` into a batch without sending it (for benchmarks and encoding tests).
  // Returns the batch bytes; `seqBase` is the first sequence number used.
  static std::vector<uint8_t> encode(const Transaction& tx, uint32_t seqBase, size_t* messages = nullptr);

 private:
  NetlinkBackend() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  Stats stats_;
  std::optional<uint32_t> lastGeneration_;
};

// An in-memory nftables with the kernel's error semantics, for node agents' tests and
// sluice's own. Transactions are applied to a copy that replaces the state only on success.
class FakeBackend : public Backend {
 public:
  FakeBackend();
  ~FakeBackend() override;
  FakeBackend(const FakeBackend&);
  FakeBackend& operator=(const FakeBackend&);
  Status apply(const Transaction& tx) override;

  // The whole state as nft-like text, objects sorted by name, elements sorted, so that two
  // equal states print equally (golden tests).
  std::string dump() const;
  std::string dumpTable(Family family, const std::string& table) const;

  // Read access for tracers and tests.
  struct ChainState {
    Chain chain;
    std::vector<Rule> rules;  // with handles assigned
  };
  struct SetState {
    Set set;
    std::map<Bytes, Element> elements;  // by key
  };
  struct TableState {
    Table table;
    std::map<std::string, ChainState> chains;
    std::map<std::string, SetState> sets;
    std::map<std::string, std::pair<uint64_t, uint64_t>> counters;  // name → packets, bytes
    uint64_t nextHandle = 1;
  };
  const TableState* table(Family family, const std::string& name) const;
  std::vector<TableRef> tables() const;  // every table, sorted by family and name
  size_t transactionsApplied() const { return applied_; }

  // Makes the next apply() fail with this status at operation `index` (fault injection).
  void failNextAt(size_t index, Status status);

 private:
  std::map<std::pair<Family, std::string>, TableState> tables_;
  size_t applied_ = 0;
  std::optional<std::pair<size_t, Status>> injected_;
};

}  // namespace sluice::nft
