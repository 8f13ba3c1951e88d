#include <doctest/doctest.h>

#include "sluice/ip.h"

using sluice::IPAddress;
using sluice::IPPrefix;

TEST_CASE("ip: parses IPv4, sloppy IPv4 as Kubernetes does, and IPv6") {
  struct Case {
    const char* in;
    const char* out;  // nullptr = invalid
  };
  const Case cases[] = {
      {"198.18.0.1", "198.18.0.1"},
      {"10.180.00.001", "10.180.0.1"},  // leading zeros are decimal, not octal
      {"fd00::1", "fd00::1"},
      {"FD00:0:0::0001", "fd00::1"},
      {"::ffff:198.18.0.1", "::ffff:198.18.0.1"},
      {"256.1.1.1", nullptr},
      {"1.2.3", nullptr},
      {"1.2.3.4.5", nullptr},
      {"1.2.3.0004", nullptr},
      {"", nullptr},
      {"nameValue", nullptr},
      {"198.18.0.1/32", nullptr},
      {"fd00::1::2", nullptr},
  };
  for (const auto& c : cases) {
    CAPTURE(c.in);
    auto r = IPAddress::parse(c.in);
    if (c.out) {
      REQUIRE(r.isOk());
      CHECK(r->toString() == c.out);
    } else {
      REQUIRE_FALSE(r.isOk());
      CHECK(r.status().code() == sluice::Code::kInvalidArgument);
      CHECK(r.status().message().find(c.in) != std::string::npos);
    }
  }
}

TEST_CASE("ip: prefixes mask host bits and test membership per family") {
  auto p = IPPrefix::parse("198.18.7.9/16");
  REQUIRE(p.isOk());
  CHECK(p->toString() == "198.18.0.0/16");
  CHECK(p->contains(*IPAddress::parse("198.18.255.1")));
  CHECK_FALSE(p->contains(*IPAddress::parse("198.19.0.1")));
  CHECK_FALSE(p->contains(*IPAddress::parse("fd00::1")));
  auto v6 = IPPrefix::parse("fd00:1::/64");
  REQUIRE(v6.isOk());
  CHECK(v6->contains(*IPAddress::parse("fd00:1::abcd")));
  CHECK_FALSE(v6->contains(*IPAddress::parse("fd00:2::1")));
  CHECK_FALSE(IPPrefix::parse("198.18.0.0/33").isOk());
  CHECK_FALSE(IPPrefix::parse("198.18.0.0/").isOk());
  CHECK_FALSE(IPPrefix::parse("198.18.0.0/x").isOk());
  CHECK(IPPrefix::parse("198.18.0.1")->bits() == 32);
}

TEST_CASE("ip: loopback and unspecified") {
  CHECK(IPAddress::parse("127.0.0.5")->isLoopback());
  CHECK(IPAddress::parse("::1")->isLoopback());
  CHECK_FALSE(IPAddress::parse("198.18.0.1")->isLoopback());
  CHECK(IPAddress::parse("0.0.0.0")->isUnspecified());
  CHECK(IPAddress::parse("::")->isUnspecified());
}
