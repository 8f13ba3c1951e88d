#include "sluice/ip.h"

#include <arpa/inet.h>

#include <cstring>

#include <fmt/format.h>

namespace sluice {

const char* familyName(IPFamily f) { return f == IPFamily::kV4 ? "IPv4" : "IPv6"; }

IPAddress IPAddress::v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  const uint8_t raw[4] = {a, b, c, d};
  return fromV4Bytes(raw);
}

IPAddress IPAddress::fromV4Bytes(const uint8_t* b) {
  IPAddress ip;
  ip.family_ = IPFamily::kV4;
  std::memcpy(ip.bytes_.data(), b, 4);
  return ip;
}

IPAddress IPAddress::fromV6Bytes(const uint8_t* b) {
  IPAddress ip;
  ip.family_ = IPFamily::kV6;
  std::memcpy(ip.bytes_.data(), b, 16);
  return ip;
}

namespace {

// Dotted quad with optional leading zeros, each part decimal 0..255 (Kubernetes' "sloppy" IPv4).
bool parseSloppyV4(std::string_view s, uint8_t out[4]) {
  int part = 0;
  size_t i = 0;
  while (part < 4) {
    if (i >= s.size() || s[i] < '0' || s[i] > '9') return false;
    unsigned v = 0;
    size_t digits = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      v = v * 10 + unsigned(s[i] - '0');
      if (++digits > 3 || v > 255) return false;
      ++i;
    }
    out[part++] = uint8_t(v);
    if (part < 4) {
      if (i >= s.size() || s[i] != '.') return false;
      ++i;
    }
  }
  return i == s.size();
}

}  // namespace

Result<IPAddress> IPAddress::parse(std::string_view text) {
  uint8_t b[16];
  if (text.find(':') == std::string_view::npos) {
    if (parseSloppyV4(text, b)) return fromV4Bytes(b);
  } else if (text.size() < INET6_ADDRSTRLEN) {
    char buf[INET6_ADDRSTRLEN];
    std::memcpy(buf, text.data(), text.size());
    buf[text.size()] = '\0';
    if (inet_pton(AF_INET6, buf, b) == 1) return fromV6Bytes(b);
  }
  return Status(Code::kInvalidArgument, fmt::format("\"{}\" is not a valid IP address", text));
}

bool IPAddress::isUnspecified() const {
  for (size_t i = 0; i < size(); ++i)
    if (bytes_[i] != 0) return false;
  return true;
}

bool IPAddress::isLoopback() const {
  if (isV4()) return bytes_[0] == 127;
  for (size_t i = 0; i < 15; ++i)
    if (bytes_[i] != 0) return false;
  return bytes_[15] == 1;
}

std::string IPAddress::toString() const {
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(isV4() ? AF_INET : AF_INET6, bytes_.data(), buf, sizeof buf);
  return buf;
}

IPPrefix::IPPrefix(IPAddress addr, int bits) : bits_(bits) {
  uint8_t b[16];
  std::memcpy(b, addr.bytes(), addr.size());
  for (size_t i = 0; i < addr.size(); ++i) {
    int keep = std::max(0, std::min(8, bits - int(i) * 8));
    b[i] &= uint8_t(0xff00 >> keep);
  }
  addr_ = addr.isV4() ? IPAddress::fromV4Bytes(b) : IPAddress::fromV6Bytes(b);
}

Result<IPPrefix> IPPrefix::parse(std::string_view text) {
  auto slash = text.find('/');
  auto ip = IPAddress::parse(text.substr(0, slash));
  if (!ip) return Status(Code::kInvalidArgument, fmt::format("\"{}\" is not a valid CIDR", text));
  int max = ip->isV4() ? 32 : 128;
  int bits = max;
  if (slash != std::string_view::npos) {
    auto rest = text.substr(slash + 1);
    if (rest.empty() || rest.size() > 3) return Status(Code::kInvalidArgument, fmt::format("\"{}\" is not a valid CIDR", text));
    bits = 0;
    for (char c : rest) {
      if (c < '0' || c > '9') return Status(Code::kInvalidArgument, fmt::format("\"{}\" is not a valid CIDR", text));
      bits = bits * 10 + (c - '0');
    }
    if (bits > max) return Status(Code::kInvalidArgument, fmt::format("\"{}\": prefix length {} exceeds {}", text, bits, max));
  }
  return IPPrefix(*ip, bits);
}

bool IPPrefix::contains(const IPAddress& ip) const {
  if (ip.family() != addr_.family()) return false;
  return IPPrefix(ip, bits_).addr_ == addr_;
}

std::string IPPrefix::toString() const { return fmt::format("{}/{}", addr_.toString(), bits_); }

}  // namespace sluice

size_t std::hash<sluice::IPAddress>::operator()(const sluice::IPAddress& ip) const noexcept {
  size_t h = size_t(ip.family());
  for (size_t i = 0; i < ip.size(); ++i) h = h * 131 + ip.bytes()[i];
  return h;
}
