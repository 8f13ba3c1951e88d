// The FakeBackend must answer like the kernel: these are the mistakes a planner can make.
#include <doctest/doctest.h>

#include "sluice/nft/backend.h"
#include "sluice/nft/rule_builder.h"

using namespace sluice;
using namespace sluice::nft;

namespace {

const TableRef kT{Family::kIPv4, "t"};

Chain chain(const std::string& name) { return Chain{kT, name, std::nullopt}; }
Set vmap(const std::string& name) {
  return Set{kT, name, {DataType::kIPv4Addr, DataType::kInetProto, DataType::kInetService}, {DataType::kVerdict}, 0, "", {}};
}
Element vmapElement(uint8_t last, const std::string& target) {
  const uint8_t ip[4] = {198, 18, 100, last};
  return Element{KeyBuilder().ipv4(ip).proto(6).port(80).take(), {}, Verdict{VerdictCode::kGoto, target}, {}};
}
Transaction base() {
  Transaction tx;
  tx.add(Table{kT, "c"});
  tx.add(chain("a"));
  tx.add(vmap("m"));
  return tx;
}

}  // namespace

TEST_CASE("fake: a transaction is all or nothing, and the error names the operation") {
  FakeBackend fake;
  REQUIRE(fake.apply(base()).isOk());
  const std::string before = fake.dump();

  Transaction tx;
  tx.add(chain("b"));                                         // 0: fine
  tx.add(RuleBuilder(kT, "b").jump("a").build());             // 1: fine
  tx.add(RuleBuilder(kT, "missing").jump("a").build());       // 2: no such chain
  Status st = fake.apply(tx);
  REQUIRE_FALSE(st.isOk());
  CHECK(st.code() == Code::kNotFound);
  CHECK(st.err() == ENOENT);
  REQUIRE(st.opIndex().has_value());
  CHECK(*st.opIndex() == 2);
  CHECK(st.message().find("missing") != std::string::npos);
  CHECK(fake.dump() == before);  // chain b was not left behind
}

TEST_CASE("fake: kernel error semantics") {
  FakeBackend fake;
  REQUIRE(fake.apply(base()).isOk());
  auto fails = [&](Transaction tx, int err) {
    Status st = fake.apply(tx);
    CHECK_FALSE(st.isOk());
    CHECK(st.err() == err);
  };
  SUBCASE("create of an existing object") { fails(Transaction().create(chain("a")), EEXIST); }
  SUBCASE("add of an existing object is a no-op") { CHECK(fake.apply(Transaction().add(chain("a")).add(vmap("m"))).isOk()); }
  SUBCASE("add of a set with another type clashes") {
    Set s = vmap("m");
    s.key = {DataType::kIPv4Addr};
    fails(Transaction().add(s), EEXIST);
  }
  SUBCASE("jump to an unknown chain") { fails(Transaction().add(RuleBuilder(kT, "a").jump("nope").build()), ENOENT); }
  SUBCASE("lookup of an unknown set") { fails(Transaction().add(RuleBuilder(kT, "a").daddrInSet("nope").build()), ENOENT); }
  SUBCASE("jump to a base chain") {
    REQUIRE(fake.apply(Transaction().add(Chain{kT, "hooked", BaseHook{"nat", Hook::kPrerouting, -100}})).isOk());
    fails(Transaction().add(RuleBuilder(kT, "a").jump("hooked").build()), EOPNOTSUPP);
  }
  SUBCASE("delete of something missing, destroy of something missing") {
    fails(Transaction().del(chain("nope")), ENOENT);
    fails(Transaction().del(Elements{kT, "m", {vmapElement(1, "a")}}), ENOENT);
    CHECK(fake.apply(Transaction().destroy(chain("nope")).destroy(Elements{kT, "m", {vmapElement(1, "a")}})).isOk());
    CHECK(fake.apply(Transaction().destroy(Table{{Family::kIPv4, "other"}, ""})).isOk());
  }
  SUBCASE("a chain in use by a rule or a map element cannot be deleted") {
    REQUIRE(fake.apply(Transaction().add(chain("b")).add(RuleBuilder(kT, "b").jump("a").build())).isOk());
    fails(Transaction().del(chain("a")), EBUSY);
    // Deleting the referencing chain first, in the same transaction, frees it.
    CHECK(fake.apply(Transaction().del(chain("b")).del(chain("a"))).isOk());
  }
  SUBCASE("map element referencing a chain; removing both in order works") {
    REQUIRE(fake.apply(Transaction().add(Elements{kT, "m", {vmapElement(1, "a")}})).isOk());
    fails(Transaction().del(chain("a")), EBUSY);
    CHECK(fake.apply(Transaction().del(Elements{kT, "m", {vmapElement(1, "a")}}).del(chain("a"))).isOk());
  }
  SUBCASE("element to an unknown chain, wrong key length, clash on different data") {
    fails(Transaction().add(Elements{kT, "m", {vmapElement(1, "nope")}}), ENOENT);
    Element bad = vmapElement(1, "a");
    bad.key.pop_back();
    fails(Transaction().add(Elements{kT, "m", {bad}}), EINVAL);
    REQUIRE(fake.apply(Transaction().add(chain("b")).add(Elements{kT, "m", {vmapElement(1, "a")}})).isOk());
    CHECK(fake.apply(Transaction().add(Elements{kT, "m", {vmapElement(1, "a")}})).isOk());  // identical: no-op
    fails(Transaction().add(Elements{kT, "m", {vmapElement(1, "b")}}), EEXIST);
    fails(Transaction().create(Elements{kT, "m", {vmapElement(1, "a")}}), EEXIST);
  }
  SUBCASE("a set used by a rule cannot be deleted") {
    Set s{kT, "ips", {DataType::kIPv4Addr}, {}, 0, "", {}};
    REQUIRE(fake.apply(Transaction().add(s).add(RuleBuilder(kT, "a").daddrInSet("ips").reject().build())).isOk());
    fails(Transaction().del(s), EBUSY);
    CHECK(fake.apply(Transaction().flush(chain("a")).del(s)).isOk());
  }
}

TEST_CASE("fake: rules are appended, inserted and replaced by handle, flush empties") {
  FakeBackend fake;
  REQUIRE(fake.apply(base()).isOk());
  REQUIRE(fake.apply(Transaction()
                         .add(RuleBuilder(kT, "a").verdict(VerdictCode::kAccept).build())
                         .add(RuleBuilder(kT, "a").verdict(VerdictCode::kDrop).build())
                         .insert(RuleBuilder(kT, "a").verdict(VerdictCode::kReturn).build()))
              .isOk());
  const auto* t = fake.table(Family::kIPv4, "t");
  REQUIRE(t);
  const auto& rules = t->chains.at("a").rules;
  REQUIRE(rules.size() == 3);
  CHECK(rules[0].text == "return");
  CHECK(rules[1].text == "accept");
  CHECK(rules[2].text == "drop");

  Rule r = RuleBuilder(kT, "a").reject().build();
  r.handle = rules[1].handle;
  REQUIRE(fake.apply(Transaction().replace(r)).isOk());
  CHECK(fake.table(Family::kIPv4, "t")->chains.at("a").rules[1].text == "reject");

  r.handle = 9999;
  CHECK(fake.apply(Transaction().replace(r)).err() == ENOENT);

  REQUIRE(fake.apply(Transaction().flush(chain("a"))).isOk());
  CHECK(fake.table(Family::kIPv4, "t")->chains.at("a").rules.empty());
}

TEST_CASE("fake: flush set, counters and reset, dump is sorted and stable") {
  FakeBackend fake;
  REQUIRE(fake.apply(base()).isOk());
  REQUIRE(fake.apply(Transaction().add(Elements{kT, "m", {vmapElement(2, "a"), vmapElement(1, "a")}})).isOk());
  const std::string dump = fake.dump();
  CHECK(dump.find("element 198.18.100.1 . tcp . 80 : goto a\n\t\telement 198.18.100.2 . tcp . 80 : goto a") !=
        std::string::npos);
  REQUIRE(fake.apply(Transaction().flush(Elements{kT, "m", {}})).isOk());
  CHECK(fake.table(Family::kIPv4, "t")->sets.at("m").elements.empty());

  REQUIRE(fake.apply(Transaction().add(CounterObject{kT, "c1"})).isOk());
  CHECK(fake.apply(Transaction().reset(CounterObject{kT, "c1"})).isOk());
  CHECK(fake.apply(Transaction().reset(CounterObject{kT, "nope"})).err() == ENOENT);
}

TEST_CASE("fake: injected failures fail the whole transaction at the given operation") {
  FakeBackend fake;
  fake.failNextAt(1, Status::fromErrno(ENOMEM, "injected"));
  Status st = fake.apply(base());
  CHECK(st.code() == Code::kResourceExhausted);
  CHECK(st.opIndex() == std::optional<size_t>(1));
  CHECK(fake.dump().empty());
  CHECK(fake.apply(base()).isOk());
}
