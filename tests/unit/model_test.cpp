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

TEST_CASE("model: protocol names") {
  CHECK(parseProtocol("UDP").value() == Protocol::kUDP);
  CHECK(parseProtocol("").value() == Protocol::kTCP);
  CHECK_FALSE(parseProtocol("ICMP").isOk());
  CHECK(std::string(protocolNftName(Protocol::kSCTP)) == "sctp");
}
