#include <doctest/doctest.h>

#include "sluice/model.h"

using namespace sluice;

TEST_CASE("model: Snapshot marks exactly the Services whose inputs changed") {
  Snapshot s;
  Service a;
  a.id = {"ns", "a"};
  s.upsertService(a);
  EndpointSlice sl;
  sl.id = {"ns", "a-1"};
  sl.serviceName = "a";
  s.upsertSlice(sl);
  CHECK(s.takeDirty() == std::set<ObjectName>{{"ns", "a"}});
  CHECK(s.dirty().empty());

  // A slice relabelled to another Service dirties both.
  sl.serviceName = "b";
  s.upsertSlice(sl);
  CHECK(s.takeDirty() == std::set<ObjectName>{{"ns", "a"}, {"ns", "b"}});
  CHECK(s.slicesFor({"ns", "a"}).empty());
  CHECK(s.slicesFor({"ns", "b"}).size() == 1);
  CHECK(s.slices().count({"ns", "a"}) == 0);  // the emptied map is dropped
  REQUIRE(s.sliceService({"ns", "a-1"}) != nullptr);
  CHECK(*s.sliceService({"ns", "a-1"}) == ObjectName{"ns", "b"});

  s.removeSlice({"ns", "a-1"});
  CHECK(s.takeDirty() == std::set<ObjectName>{{"ns", "b"}});
  CHECK(s.sliceCount() == 0);
  CHECK(s.sliceService({"ns", "a-1"}) == nullptr);

  s.removeSlice({"ns", "gone"});  // unknown: nothing changes
  s.removeService({"ns", "gone"});
  CHECK(s.dirty().empty());

  s.removeService({"ns", "a"});
  CHECK(s.takeDirty() == std::set<ObjectName>{{"ns", "a"}});
  CHECK(s.services().empty());
}

TEST_CASE("model: EndpointHints is a value, none of either kind is empty") {
  EndpointHints none({}, {});
  CHECK(none.empty());
  CHECK(none == EndpointHints());
  CHECK(none.zones().empty());
  EndpointHints a({"zone-a"}, {});
  CHECK_FALSE(a.empty());
  CHECK(a.zones() == std::vector<std::string>{"zone-a"});
  CHECK(a.nodes().empty());
  EndpointHints b = a;  // a deep copy: equal, and not the same lists
  CHECK(b == a);
  CHECK(&b.zones() != &a.zones());
  b = EndpointHints({"zone-a"}, {"node-1"});
  CHECK_FALSE(b == a);
  Endpoint x, y;
  x.hints = a;
  y.hints = EndpointHints({"zone-a"}, {});
  CHECK(x == y);  // compared by content, as a re-delivered slice must be
  y.hints = none;
  CHECK_FALSE(x == y);
}

TEST_CASE("model: protocol names") {
  CHECK(parseProtocol("UDP").value() == Protocol::kUDP);
  CHECK(parseProtocol("").value() == Protocol::kTCP);
  CHECK_FALSE(parseProtocol("ICMP").isOk());
  CHECK(std::string(protocolNftName(Protocol::kSCTP)) == "sctp");
}
