// sluice/nft/transaction.h — a value-type nftables transaction.
//
// A Transaction is an ordered list of operations (verb + object). It does nothing by itself:
// a Backend applies it atomically — every operation or none. Verbs follow nft's meaning:
//   add      create if missing, no error if it exists (rules: append)
//   create   create; AlreadyExists if it exists
//   insert   rules only: prepend (or insert before Rule::handle)
//   replace  rules only: replace the rule with Rule::handle
//   delete   remove; NotFound if it does not exist
//   destroy  remove if it exists; success if not (kernel ≥ 6.3)
//   flush    tables/chains: remove all rules; sets: remove all elements
//   reset    counters: read and zero. The kernel does not accept reset inside a batch, so it runs
//            right after the batch commits (not atomically with it).
#pragma once

#include <string>
#include <vector>

#include "sluice/nft/objects.h"

namespace sluice::nft {

enum class Verb : uint8_t { kAdd, kCreate, kInsert, kReplace, kDelete, kDestroy, kFlush, kReset };
const char* verbName(Verb v);

struct Operation {
  Verb verb;
  Object object;
  bool operator==(const Operation&) const = default;
};

class Transaction {
 public:
  Transaction& add(Object o) { return push(Verb::kAdd, std::move(o)); }
  Transaction& create(Object o) { return push(Verb::kCreate, std::move(o)); }
  Transaction& insert(Rule r) { return push(Verb::kInsert, std::move(r)); }
  Transaction& replace(Rule r) { return push(Verb::kReplace, std::move(r)); }
  Transaction& del(Object o) { return push(Verb::kDelete, std::move(o)); }
  Transaction& destroy(Object o) { return push(Verb::kDestroy, std::move(o)); }
  Transaction& flush(Object o) { return push(Verb::kFlush, std::move(o)); }
  Transaction& reset(CounterObject c) { return push(Verb::kReset, std::move(c)); }
  Transaction& push(Verb v, Object o) {
    ops_.push_back({v, std::move(o)});
    return *this;
  }
  void append(Transaction&& other);

  const std::vector<Operation>& ops() const { return ops_; }
  size_t size() const { return ops_.size(); }
  bool empty() const { return ops_.empty(); }
  // Number of set elements the transaction touches (for metrics and sizing).
  size_t elementCount() const;
  // One line per operation, nft-like ("add chain ip sluice foo"), for logs and tests.
  std::string describe() const;
  static std::string describe(const Operation& op);

 private:
  std::vector<Operation> ops_;
};

}  // namespace sluice::nft
