// The node / pods / external-client topology (see testbed.h for the picture).
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "sluice/netns.h"
#include "testbed.h"

namespace sluice::testbed {

namespace {

constexpr int kMaxBackends = 50;
constexpr auto kLinkWait = std::chrono::seconds(5);

IPAddress must(std::string_view text) {
  auto r = IPAddress::parse(text);
  return r.isOk() ? *r : IPAddress();
}

std::string v4v6(IPFamily f, std::string_view v4, std::string_view v6) {
  return std::string(f == IPFamily::kV4 ? v4 : v6);
}

// `ip -n NS args…`: ip switches into the namespace itself, so nothing runs in the root one.
Status ip(const Netns& ns, std::vector<std::string> args) {
  std::vector<std::string> argv = {"ip", "-n", ns.name()};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run(argv);
  return r.isOk() ? Status::ok() : r.status();
}

// Polls interface flags inside `ns` until every device in `devs` has carrier and is running
// (operstate up), bounded by kLinkWait.
Status waitRunning(const Netns& ns, const std::vector<std::string>& devs) {
  UniqueFd sock;
  Status opened = runInNetns(ns.path(), [&] {
    sock.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  });
  if (!opened.isOk()) return opened;
  if (!sock) return Status::fromErrno(errno, "socket for link flags in " + ns.name());
  const auto deadline = std::chrono::steady_clock::now() + kLinkWait;
  for (const auto& dev : devs) {
    while (true) {
      ifreq ifr{};
      std::strncpy(ifr.ifr_name, dev.c_str(), IFNAMSIZ - 1);
      if (::ioctl(sock.get(), SIOCGIFFLAGS, &ifr) != 0)
        return Status::fromErrno(errno, fmt::format("flags of {} in {}", dev, ns.name()));
      const unsigned wanted = IFF_UP | IFF_RUNNING;
      if ((static_cast<unsigned>(ifr.ifr_flags) & wanted) == wanted) break;
      if (std::chrono::steady_clock::now() > deadline) {
        return Status(Code::kUnavailable,
                      fmt::format("{} in {} not running after {} s (flags {:#x})", dev,
                                  ns.name(), kLinkWait.count(), ifr.ifr_flags));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  return Status::ok();
}

// With nodad (and accept_dad=0) no address should ever be tentative; checked anyway because a
// tentative address silently cannot be used as a source, which would look like packet loss.
Status waitNoTentative(const Netns& ns) {
  const auto deadline = std::chrono::steady_clock::now() + kLinkWait;
  while (true) {
    auto out = run({"ip", "-n", ns.name(), "-6", "-o", "addr", "show", "tentative"});
    if (!out.isOk()) return out.status();
    if (out->empty()) return Status::ok();
    if (std::chrono::steady_clock::now() > deadline)
      return Status(Code::kUnavailable,
                    fmt::format("tentative addresses in {}: {}", ns.name(), *out));
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace

IPAddress Topology::nodeIP(IPFamily f) { return must(v4v6(f, "198.18.0.1", "fd00::1")); }
IPAddress Topology::podGatewayIP(IPFamily f) { return must(v4v6(f, "198.18.1.1", "fd00:1::1")); }
IPPrefix Topology::podCIDR(IPFamily f) {
  return IPPrefix(podGatewayIP(f), f == IPFamily::kV4 ? 24 : 64);
}
IPAddress Topology::backendIP(int i, IPFamily f) {
  return must(f == IPFamily::kV4 ? fmt::format("198.18.1.{}", 10 + i)
                                 : fmt::format("fd00:1::{:x}", 10 + i));
}
IPAddress Topology::clientIP(IPFamily f) { return must(v4v6(f, "198.18.1.100", "fd00:1::100")); }
IPAddress Topology::nodeExtIP(IPFamily f) { return must(v4v6(f, "203.0.113.1", "fd00:2::1")); }
IPAddress Topology::extIP(IPFamily f) { return must(v4v6(f, "203.0.113.2", "fd00:2::2")); }
IPAddress Topology::extAltIP(IPFamily f) { return must(v4v6(f, "198.51.100.2", "fd00:3::2")); }
IPAddress Topology::serviceIP(int n, IPFamily f) {
  return must(f == IPFamily::kV4 ? fmt::format("198.19.{}.{}", (n >> 8) & 0xff, n & 0xff)
                                 : fmt::format("fd00:100::{:x}", n & 0xffff));
}
IPPrefix Topology::serviceCIDR(IPFamily f) {
  return f == IPFamily::kV4 ? IPPrefix(must("198.19.0.0"), 16) : IPPrefix(must("fd00:100::"), 64);
}

Topology::~Topology() = default;

const Netns& Topology::ext() const {
  // Asking for a namespace the options did not create is a bug in the test itself.
  if (!ext_) {
    fmt::print(stderr, "sluice-testbed: Topology::ext() without options.externalClient\n");
    std::abort();
  }
  return *ext_;
}

const Netns& Topology::backend(int i) const {
  if (i < 1 || i > backendCount()) {
    fmt::print(stderr, "sluice-testbed: Topology::backend({}) out of 1..{}\n", i, backendCount());
    std::abort();
  }
  return backends_[static_cast<size_t>(i - 1)];
}

std::vector<const Netns*> Topology::namespaces() const {
  std::vector<const Netns*> all;
  if (node_) all.push_back(&*node_);
  if (client_) all.push_back(&*client_);
  for (const auto& b : backends_) all.push_back(&b);
  if (ext_) all.push_back(&*ext_);
  return all;
}

Result<std::unique_ptr<Topology>> Topology::create(const TopologyOptions& options) {
  if (options.backends < 1 || options.backends > kMaxBackends) {
    return Status(Code::kInvalidArgument,
                  fmt::format("backends must be 1..{}, got {}", kMaxBackends, options.backends));
  }
  // The object owns each namespace from the moment it exists, so returning early anywhere in
  // build() deletes exactly what was created.
  std::unique_ptr<Topology> topo(new Topology(options));
  Status st = topo->build();
  if (!st.isOk()) return st.withContext("building testbed topology");
  return topo;
}

Status Topology::build() {
  const bool v6 = options_.ipv6;

  // 1. Namespaces.
  auto node = Netns::create("node");
  if (!node.isOk()) return node.status();
  node_.emplace(std::move(*node));
  auto client = Netns::create("client");
  if (!client.isOk()) return client.status();
  client_.emplace(std::move(*client));
  for (int i = 1; i <= options_.backends; ++i) {
    auto b = Netns::create(fmt::format("backend{}", i));
    if (!b.isOk()) return b.status();
    backends_.push_back(std::move(*b));
  }
  if (options_.externalClient) {
    auto e = Netns::create("ext");
    if (!e.isOk()) return e.status();
    ext_.emplace(std::move(*e));
  }

  // 2. Sysctls, before any interface exists: conf/default/* is copied into each new device.
  // IPv4 conf of a new namespace is inherited from the root namespace (devconf_inherit_init_net
  // = 0), so rp_filter is set explicitly rather than assumed.
  for (const Netns* ns : namespaces()) {
    for (auto [key, value] : {std::pair{"net.ipv6.conf.all.accept_dad", "0"},
                              std::pair{"net.ipv6.conf.default.accept_dad", "0"},
                              std::pair{"net.ipv4.conf.all.rp_filter", "0"},
                              std::pair{"net.ipv4.conf.default.rp_filter", "0"}}) {
      if (Status s = setSysctl(*ns, key, value); !s.isOk()) return s;
    }
  }
  const Netns& n = *node_;
  if (Status s = setSysctl(n, "net.ipv4.ip_forward", "1"); !s.isOk()) return s;
  if (v6) {
    if (Status s = setSysctl(n, "net.ipv6.conf.all.forwarding", "1"); !s.isOk()) return s;
  }
  // br_netfilter's switches are per namespace (and 1 by default here since it is built in);
  // without br_netfilter they do not exist and bridged traffic skips the inet hooks.
  bridgeNetfilter_ = setSysctl(n, "net.bridge.bridge-nf-call-iptables", "1").isOk() &&
                     setSysctl(n, "net.bridge.bridge-nf-call-ip6tables", "1").isOk();

  // 3-6. Links, addresses and routes, as a list of `ip -n NS …` commands run in order; the
  // first failure stops the build (and the destructor removes the namespaces).
  std::vector<std::pair<const Netns*, std::vector<std::string>>> cmds;
  auto in = [&](const Netns& ns, std::vector<std::string> args) {
    cmds.emplace_back(&ns, std::move(args));
  };
  const auto kV4 = IPFamily::kV4;
  const auto kV6 = IPFamily::kV6;
  // nodad: usable at once, instead of after 1-2 s of duplicate address detection.
  auto addr = [&](const Netns& ns, const std::string& dev, const IPAddress& a, int bits) {
    if (a.isV4()) {
      in(ns, {"addr", "add", fmt::format("{}/{}", a.toString(), bits), "dev", dev});
    } else if (v6) {
      in(ns, {"-6", "addr", "add", fmt::format("{}/{}", a.toString(), bits), "dev", dev, "nodad"});
    }
  };

  // Links, all created from inside the node namespace; `peer … netns X` moves the pod end
  // straight into its namespace, so no interface ever exists in the root namespace.
  // Fixed bridge MAC: otherwise br0 takes the lowest port MAC and changes it as ports come and
  // go, invalidating the pods' neighbour entries. Snooping off so ND/ARP multicast floods.
  in(n, {"link", "add", kBridge, "address", "02:00:c6:12:01:01", "type", "bridge", "stp_state",
         "0", "forward_delay", "0", "mcast_snooping", "0", "nf_call_iptables", "1",
         "nf_call_ip6tables", "1"});
  // This kernel has no `dummy` link type (CONFIG_DUMMY off: "Unknown device type"); a bridge
  // without ports is a fine stand-in for a device that only carries the node IP.
  in(n, {"link", "add", kNodeIPDevice, "type", "bridge"});

  struct Pod {
    const Netns* ns;
    std::string nodeDev;
    IPAddress v4, v6;
  };
  std::vector<Pod> pods;
  pods.push_back({&*client_, kClientDevice, clientIP(kV4), clientIP(kV6)});
  for (int i = 1; i <= options_.backends; ++i) {
    pods.push_back({&backends_[static_cast<size_t>(i - 1)], backendDevice(i),
                    backendIP(i, kV4), backendIP(i, kV6)});
  }
  for (const Pod& p : pods) {
    in(n, {"link", "add", p.nodeDev, "type", "veth", "peer", "name", kPodDevice, "netns",
           p.ns->name()});
    in(n, {"link", "set", p.nodeDev, "master", kBridge});
    // Hairpin lets a pod reach itself through a Service (the frame leaves by the port it
    // came in), as kubenet / the bridge CNI configure it.
    in(n, {"link", "set", p.nodeDev, "type", "bridge_slave", "hairpin", "on"});
  }
  if (ext_) {
    in(n, {"link", "add", kExtDevice, "type", "veth", "peer", "name", kPodDevice, "netns",
           ext_->name()});
  }

  // Up, then addresses (a v4 prefix route appears only on an up device).
  std::vector<std::string> nodeDevs = {kBridge, kNodeIPDevice};
  for (const Pod& p : pods) nodeDevs.push_back(p.nodeDev);
  if (ext_) nodeDevs.push_back(kExtDevice);
  for (const auto& dev : nodeDevs) in(n, {"link", "set", dev, "up"});
  for (const Pod& p : pods) in(*p.ns, {"link", "set", kPodDevice, "up"});
  if (ext_) in(*ext_, {"link", "set", kPodDevice, "up"});

  addr(n, kBridge, podGatewayIP(kV4), 24);
  addr(n, kBridge, podGatewayIP(kV6), 64);
  addr(n, kNodeIPDevice, nodeIP(kV4), 24);
  addr(n, kNodeIPDevice, nodeIP(kV6), 64);
  for (const Pod& p : pods) {
    addr(*p.ns, kPodDevice, p.v4, 24);
    addr(*p.ns, kPodDevice, p.v6, 64);
  }
  if (ext_) {
    addr(n, kExtDevice, nodeExtIP(kV4), 24);
    addr(n, kExtDevice, must("198.51.100.1"), 24);
    addr(n, kExtDevice, nodeExtIP(kV6), 64);
    addr(n, kExtDevice, must("fd00:3::1"), 64);
    addr(*ext_, kPodDevice, extIP(kV4), 24);
    addr(*ext_, kPodDevice, extAltIP(kV4), 24);
    addr(*ext_, kPodDevice, extIP(kV6), 64);
    addr(*ext_, kPodDevice, extAltIP(kV6), 64);
  }

  // Routes. The node's default route leads into the port-less nodeip0: a real node has a
  // default route, and without one, locally generated packets to Service IPs would fail the
  // route lookup (ENETUNREACH) before the output hook could DNAT them. Whatever still follows
  // it is dropped inside this namespace.
  in(n, {"route", "add", "default", "dev", kNodeIPDevice});
  if (v6) in(n, {"-6", "route", "add", "default", "dev", kNodeIPDevice});
  for (const Pod& p : pods) {
    in(*p.ns, {"route", "add", "default", "via", podGatewayIP(kV4).toString()});
    if (v6) in(*p.ns, {"-6", "route", "add", "default", "via", podGatewayIP(kV6).toString()});
  }
  if (ext_) {
    // Explicit src: with two addresses on eth0 the kernel's choice would otherwise depend on
    // address order (v4) or prefix-length ties (v6).
    in(*ext_, {"route", "add", "default", "via", nodeExtIP(kV4).toString(), "src",
               extIP(kV4).toString()});
    if (v6) {
      in(*ext_, {"-6", "route", "add", "default", "via", nodeExtIP(kV6).toString(), "src",
                 extIP(kV6).toString()});
    }
  }

  for (auto& [ns, args] : cmds) {
    if (Status s = ip(*ns, args); !s.isOk()) return s;
  }

  // 7. Wait for carrier everywhere (veth carrier events are immediate; the bridge's follows
  // its first forwarding port, at once with STP off).
  std::vector<std::string> nodeVeths;
  for (const Pod& p : pods) nodeVeths.push_back(p.nodeDev);
  if (ext_) nodeVeths.push_back(kExtDevice);
  nodeVeths.push_back(kBridge);
  if (Status s = waitRunning(n, nodeVeths); !s.isOk()) return s;
  for (const Pod& p : pods) {
    if (Status s = waitRunning(*p.ns, {kPodDevice}); !s.isOk()) return s;
  }
  if (ext_) {
    if (Status s = waitRunning(*ext_, {kPodDevice}); !s.isOk()) return s;
  }
  if (v6) {
    for (const Netns* ns : namespaces()) {
      if (Status s = waitNoTentative(*ns); !s.isOk()) return s;
    }
  }
  return Status::ok();
}

std::string Topology::describe() const {
  const auto kV4 = IPFamily::kV4;
  const auto kV6 = IPFamily::kV6;
  const bool v6 = options_.ipv6;
  auto both = [&](const IPAddress& a4, const IPAddress& a6) {
    return v6 ? fmt::format("{} {}", a4.toString(), a6.toString()) : a4.toString();
  };
  std::string s;
  if (node_) {
    s += fmt::format("node     {}  node IP {}  pod gateway {}\n", node_->name(),
                     both(nodeIP(kV4), nodeIP(kV6)), both(podGatewayIP(kV4), podGatewayIP(kV6)));
  }
  if (client_) {
    s += fmt::format("client   {}  {}\n", client_->name(), both(clientIP(kV4), clientIP(kV6)));
  }
  for (size_t i = 0; i < backends_.size(); ++i) {
    int b = static_cast<int>(i) + 1;
    s += fmt::format("backend{} {}  {}\n", b, backends_[i].name(),
                     both(backendIP(b, kV4), backendIP(b, kV6)));
  }
  if (ext_) {
    s += fmt::format("ext      {}  {} (also {})\n", ext_->name(), both(extIP(kV4), extIP(kV6)),
                     both(extAltIP(kV4), extAltIP(kV6)));
  }
  return s;
}

}  // namespace sluice::testbed
