// sluice/ip.h — IP address and prefix value types.
//
// Parsing follows Kubernetes: IPv4 octets with leading zeros are accepted and read as
// decimal ("10.180.00.001" is 10.180.0.1, as Go's legacy parser did), IPv4-mapped IPv6 is
// kept as IPv6, anything else that is not an address is an error naming the input.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "sluice/status.h"

namespace sluice {

enum class IPFamily : uint8_t { kV4 = 4, kV6 = 6 };

const char* familyName(IPFamily f);  // "IPv4" / "IPv6"

class IPAddress {
 public:
  IPAddress() = default;
  static IPAddress v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d);
  static IPAddress fromV4Bytes(const uint8_t* b);
  static IPAddress fromV6Bytes(const uint8_t* b);

  // Parses "198.18.0.1", "10.180.00.001" (sloppy, as Kubernetes accepts), "fd00::1".
  static Result<IPAddress> parse(std::string_view text);

  IPFamily family() const { return family_; }
  bool isV4() const { return family_ == IPFamily::kV4; }
  bool isV6() const { return family_ == IPFamily::kV6; }
  bool isUnspecified() const;
  bool isLoopback() const;
  // 4 or 16 bytes in network order.
  const uint8_t* bytes() const { return bytes_.data(); }
  size_t size() const { return isV4() ? 4 : 16; }
  std::string toString() const;

  auto operator<=>(const IPAddress&) const = default;
  bool operator==(const IPAddress&) const = default;

 private:
  IPFamily family_ = IPFamily::kV4;
  std::array<uint8_t, 16> bytes_{};
};

class IPPrefix {
 public:
  IPPrefix() = default;
  IPPrefix(IPAddress addr, int bits);  // masks host bits
  // "198.18.0.0/16"; a bare address is a host prefix.
  static Result<IPPrefix> parse(std::string_view text);

  const IPAddress& address() const { return addr_; }
  int bits() const { return bits_; }
  IPFamily family() const { return addr_.family(); }
  bool contains(const IPAddress& ip) const;
  std::string toString() const;

  auto operator<=>(const IPPrefix&) const = default;
  bool operator==(const IPPrefix&) const = default;

 private:
  IPAddress addr_;
  int bits_ = 0;
};

}  // namespace sluice

template <>
struct std::hash<sluice::IPAddress> {
  size_t operator()(const sluice::IPAddress& ip) const noexcept;
};
