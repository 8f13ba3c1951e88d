// sluice-latency: target P3 (shared/spec/performance.md). New-connection latency from a client
// pod through the node to the FIRST and the LAST of N ClusterIP Services, with sluice's
// ruleset and with kube-proxy's iptables layout (bench/compare.py writes it; this program
// loads it with iptables-restore), in one run.
//
//   sudo build/bench/sluice-latency [--services 1,1000,10000] [--endpoints 10]
//        [--connections 2000] [--warmup 100] [--batch 50]
//        [--impls sluice,iptables-legacy,iptables-nft] [--out bench/results]
//
// Every (ruleset, N) pair gets its own lib/testbed topology — client netns → node netns with
// the rules → backend netns, one per endpoint of the first and the last Service, each with a
// TCP listener on 8080 — plus one topology without rules where the client connects straight
// to the backends (the no-NAT reference). All are built and loaded first, both Services are
// checked to answer, conntrack is flushed; then connect()s go to every topology in batches,
// round-robin, so a shared machine's drifting load hits every row alike. A connect() is
// timed from the call until the non-blocking socket is writable: SYN out, DNAT in the node's
// prerouting hook, SYN-ACK back through conntrack. Each uses a fresh source port and is closed
// with RST (no TIME_WAIT). Everything lives in namespaces the testbed creates and deletes (a
// killed run's namespaces are reaped by the next testbed user); counts and timeouts are
// bounded.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sluice/conntrack.h"
#include "sluice/dataplane.h"
#include "sluice/netns.h"
#include "testbed.h"
#include "workload.h"

namespace {

using namespace sluice;
using testbed::Topology;
using Clock = std::chrono::steady_clock;

constexpr uint16_t kServicePort = 80, kTargetPort = 8080;
constexpr int kConnectTimeoutMs = 1000;

struct Options {
  std::vector<uint32_t> services = {1, 1000, 10000};
  uint32_t endpoints = 10;
  int connections = 2000;
  int warmup = 100;
  int batch = 50;
  std::vector<std::string> impls = {"sluice", "iptables-legacy", "iptables-nft"};
  std::string out = SLUICE_BENCH_DIR "/results";
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// One timed connect(); returns microseconds, or a negative value on failure.
double connectOnce(const IPAddress& dst, uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  std::memcpy(&sa.sin_addr, dst.bytes(), 4);
  double us = -1;
  const auto t0 = Clock::now();
  int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  if (rc == 0 || errno == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    if (rc == 0 || ::poll(&p, 1, kConnectTimeoutMs) == 1) {
      const auto t1 = Clock::now();
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err == 0) us = std::chrono::duration<double, std::micro>(t1 - t0).count();
    }
  }
  linger lg{1, 0};  // close with RST: no TIME_WAIT, the next connect gets a fresh flow
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  ::close(fd);
  return us;
}

struct Series {
  std::vector<double> first, last;
  int failed = 0;
};

// Alternates first/last so that drift during the run hits both alike.
Result<Series> measure(const testbed::Netns& client, const IPAddress& first, const IPAddress& last, uint16_t port,
                       int count) {
  Series s;
  Status st = runInNetns(client.path(), [&] {
    for (int k = 0; k < count; ++k)
      for (int which = 0; which < 2; ++which) {
        double us = connectOnce(which ? last : first, port);
        if (us < 0) ++s.failed;
        else (which ? s.last : s.first).push_back(us);
      }
  });
  if (!st) return st;
  return s;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  size_t rank = size_t(std::ceil(p / 100.0 * double(v.size())));  // nearest rank
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

// --- loading rulesets -----------------------------------------------------------------------

Result<double> loadSluice(const testbed::Netns& node, uint32_t n, uint32_t e) {
  auto backend = nft::NetlinkBackend::open({node.path()});
  if (!backend) return backend.status();
  ProxyConfig cfg;
  cfg.nodeName = "node-0";
  cfg.clusterCIDRs = {IPPrefix::parse("198.18.0.0/15").value()};  // compare.py's CLUSTER_CIDR
  DataPlane dp(cfg, **backend);
  Snapshot snap;
  bench::fillDataplaneSnapshot(snap, n, e);
  auto r = dp.sync(snap);
  if (!r.status) return r.status;
  return std::chrono::duration<double>(r.planTime + r.applyTime).count();
}


// compare.py writes kube-proxy's iptables-restore input for the data-plane address plan.
Result<std::string> iptablesInput(uint32_t n, uint32_t e, const std::string& dir) {
  const std::string path = fmt::format("{}/kube-proxy-iptables-dataplane-{}x{}.rules", dir, n, e);
  if (std::filesystem::exists(path)) return path;
  auto r = testbed::run({"python3", SLUICE_BENCH_DIR "/compare.py", "--emit-iptables", path, "--plan", "dataplane",
                         "--services", std::to_string(n), "--endpoints", std::to_string(e)},
                        {std::chrono::milliseconds(300000), ""});
  if (!r) return r.status();
  return path;
}

Result<double> loadIptables(const testbed::Netns& node, const std::string& loader, const std::string& file) {
  const auto t0 = Clock::now();
  auto r = testbed::execIn(node, {loader, "--counters", file}, {std::chrono::milliseconds(600000), ""});
  if (!r) return r.status();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}


Status flushConntrack(const testbed::Netns& node) {
  auto ct = conntrack::Client::open(node.path());
  if (!ct) return ct.status();
  auto n = (*ct)->removeMatching(conntrack::Filter{});
  return n ? Status::ok() : n.status();
}

// --- the run --------------------------------------------------------------------------------

// One ruleset at one size, in its own topology, loaded once and kept until the end.
struct Setup {
  std::string impl;       // "none": no rules, connections straight to the backends
  uint32_t services = 0;  // 0 for "none"
  double loadSeconds = NAN;
  std::unique_ptr<Topology> topo;
  std::vector<std::unique_ptr<testbed::Server>> servers;
  IPAddress first, last;
  uint16_t port = kServicePort;
  Series series;
};

Status prepare(Setup& s, const Options& o, const std::string& tmpdir) {
  testbed::TopologyOptions topt;
  topt.backends = int(o.endpoints);
  topt.ipv6 = false;
  topt.externalClient = false;
  auto topo = Topology::create(topt);
  if (!topo) return topo.status();
  s.topo = std::move(*topo);
  for (int b = 1; b <= int(o.endpoints); ++b) {
    auto srv = testbed::Server::start(s.topo->backend(b), Protocol::kTCP, IPFamily::kV4, kTargetPort, fmt::format("b{}", b));
    if (!srv) return srv.status();
    s.servers.push_back(std::move(*srv));
  }
  const testbed::Netns& node = s.topo->node();
  if (s.impl == "none") {
    s.first = Topology::backendIP(1, IPFamily::kV4);
    s.last = Topology::backendIP(int(o.endpoints), IPFamily::kV4);
    s.port = kTargetPort;
  } else {
    Result<double> load = Status(Code::kInternal, "no loader");
    if (s.impl == "sluice") {
      load = loadSluice(node, s.services, o.endpoints);
    } else {
      auto file = iptablesInput(s.services, o.endpoints, tmpdir);
      if (!file) return file.status();
      load = loadIptables(node, s.impl + "-restore", *file);
    }
    if (!load) return load.status().withContext(fmt::format("{} loading {} Services", s.impl, s.services));
    s.loadSeconds = *load;
    s.first = bench::dataplaneServiceIP(0);
    s.last = bench::dataplaneServiceIP(s.services - 1);
  }
  for (const IPAddress& dst : {s.first, s.last}) {
    auto p = testbed::probe(s.topo->client(), Protocol::kTCP, dst, s.port);
    if (!p.answered())
      return Status(Code::kInternal, fmt::format("{} with {} Services: {}:{} {}", s.impl, s.services, dst.toString(),
                                                 s.port, p.toString()));
  }
  return flushConntrack(node);
}

// Every setup exists at once; connections go to them in small batches, round-robin, so that
// the load of a shared machine drifting during the run hits every row alike (measured one
// after the other, the same 1-Service series moved by 40 % between rounds).
Status runAll(std::vector<Setup>& setups, const Options& o) {
  const int batches = (o.connections + o.batch - 1) / o.batch;
  const int warmupBatches = (o.warmup + o.batch - 1) / o.batch;
  for (int b = 0; b < warmupBatches + batches; ++b) {
    // Rotate the starting setup so no row always follows the same neighbour.
    for (size_t k = 0; k < setups.size(); ++k) {
      Setup& s = setups[(k + size_t(b)) % setups.size()];
      const int n = std::min(o.batch, o.connections - std::max(0, b - warmupBatches) * o.batch);
      auto r = measure(s.topo->client(), s.first, s.last, s.port, n);
      if (!r) return r.status();
      if (b < warmupBatches) continue;
      s.series.first.insert(s.series.first.end(), r->first.begin(), r->first.end());
      s.series.last.insert(s.series.last.end(), r->last.begin(), r->last.end());
      s.series.failed += r->failed;
    }
    if ((b + 1) % 10 == 0) {
      fmt::print("  batch {}/{}\n", b + 1, warmupBatches + batches);
      std::fflush(stdout);
    }
  }
  return Status::ok();
}

std::string label(const std::string& impl) {
  if (impl == "sluice") return "sluice (nft, verdict map)";
  return "kube-proxy iptables, " + impl + "-restore";
}

int writeResults(const Options& o, const std::vector<Setup>& setups, const std::string& kernel) {
  std::filesystem::create_directories(o.out);
  auto find = [&](const std::string& impl, uint32_t n) -> const Setup* {
    for (const Setup& s : setups)
      if (s.impl == impl && s.services == n) return &s;
    return nullptr;
  };
  {
    std::ofstream raw(o.out + "/dataplane-samples.dat");
    raw << "# ruleset services(0 = no NAT) target connect_us, in measurement order per row\n";
    for (const Setup& s : setups)
      for (int w = 0; w < 2; ++w)
        for (double us : w ? s.series.last : s.series.first)
          raw << s.impl << ' ' << s.services << ' ' << (w ? "last" : "first") << ' ' << fmt::format("{:.1f}", us) << '\n';
  }
  // Some 60 000 lines: kept compressed next to the summary.
  if (!testbed::run({"gzip", "-9", "-f", o.out + "/dataplane-samples.dat"}))
    fmt::print("gzip failed: dataplane-samples.dat left uncompressed\n");
  std::string md = fmt::format(
      "<!-- generated by bench/sluice-latency -->\n"
      "Kernel {}; {} endpoints per Service; {} timed connect()s per target (after {} untimed), in batches of {} "
      "round-robin over all rows, every row in its own client → node → backend namespaces, all alive at once.\n\n"
      "| ruleset | Services | first p50 µs | first p99 µs | last p50 µs | last p99 µs | last ÷ first (p50) "
      "| p50 ÷ 1 Service (first / last) | failed | load s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
      kernel, o.endpoints, o.connections, o.warmup, o.batch);
  nlohmann::json js;
  js["kernel"] = kernel;
  js["endpoints"] = o.endpoints;
  js["connections"] = o.connections;
  js["warmup"] = o.warmup;
  js["batch"] = o.batch;
  if (const Setup* none = find("none", 0)) {
    const double f50 = percentile(none->series.first, 50), l50 = percentile(none->series.last, 50);
    md += fmt::format("| no NAT (straight to the backend pods) | – | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.2f} | – | {} | – |\n",
                      f50, percentile(none->series.first, 99), l50, percentile(none->series.last, 99), l50 / f50,
                      none->series.failed);
    js["results"]["none"] = {{"first_p50_us", f50}, {"last_p50_us", l50}};
  }
  std::ofstream dat(o.out + "/dataplane.dat");
  dat << "# services, then per ruleset (sluice, iptables-legacy, iptables-nft): first_p50 first_p99 last_p50 last_p99 (us)\n";
  for (uint32_t n : o.services) {
    dat << n;
    for (const char* impl : {"sluice", "iptables-legacy", "iptables-nft"}) {
      const Setup* s = find(impl, n);
      if (!s) {
        dat << " NaN NaN NaN NaN";
        continue;
      }
      dat << fmt::format(" {:.2f} {:.2f} {:.2f} {:.2f}", percentile(s->series.first, 50), percentile(s->series.first, 99),
                         percentile(s->series.last, 50), percentile(s->series.last, 99));
    }
    dat << '\n';
  }
  dat.close();
  nlohmann::json p3;
  for (const auto& impl : o.impls) {
    const Setup* one = find(impl, o.services.front());
    const double base = one ? percentile(one->series.first, 50) : NAN;
    for (uint32_t n : o.services) {
      const Setup* s = find(impl, n);
      if (!s) continue;
      const double f50 = percentile(s->series.first, 50), f99 = percentile(s->series.first, 99);
      const double l50 = percentile(s->series.last, 50), l99 = percentile(s->series.last, 99);
      md += fmt::format("| {} | {} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.2f} | {:.2f} / {:.2f} | {} | {:.2f} |\n", label(impl),
                        n, f50, f99, l50, l99, l50 / f50, f50 / base, l50 / base, s->series.failed, s->loadSeconds);
      js["results"][impl][std::to_string(n)] = {{"first_p50_us", f50}, {"first_p99_us", f99}, {"last_p50_us", l50},
                                                {"last_p99_us", l99}, {"first_n", s->series.first.size()},
                                                {"last_n", s->series.last.size()}, {"failed", s->series.failed},
                                                {"load_seconds", s->loadSeconds}};
    }
    const Setup* at1 = find(impl, 1);
    const Setup* at10k = find(impl, 10000);
    if (impl == "sluice" && at1 && at10k) {
      const double ref = percentile(at1->series.first, 50);
      const double worst = std::max(percentile(at10k->series.first, 50), percentile(at10k->series.last, 50));
      p3 = {{"one_service_p50_us", ref}, {"ten_thousand_worst_p50_us", worst}, {"ratio", worst / ref},
            {"met", worst <= ref * 1.05}};
    }
  }
  md += "\n“p50 ÷ 1 Service”: the first and the last Service's p50 over the first Service's p50 with one Service "
        "loaded, same ruleset. Load s: sluice's sync (plan + commit) or the iptables-restore process.\n";
  if (!p3.is_null()) {
    md += fmt::format("\nP3 (sluice: p50 at 10 000 Services, the worse of first and last, within 5 % of 1 Service): "
                      "{:.1f} µs vs {:.1f} µs = {:.3f}: **{}**\n",
                      p3["ten_thousand_worst_p50_us"].get<double>(), p3["one_service_p50_us"].get<double>(),
                      p3["ratio"].get<double>(), p3["met"].get<bool>() ? "met" : "not met");
  }
  js["p3"] = p3;
  std::ofstream(o.out + "/dataplane.md") << md;
  std::ofstream(o.out + "/dataplane.json") << js.dump(1) << '\n';
  fmt::print("\n{}\nwrote {}/dataplane.md, dataplane.json, dataplane.dat, dataplane-samples.dat.gz\n", md, o.out);
  if (testbed::run({"gnuplot", "-e", fmt::format("datafile='{0}/dataplane.dat'; outfile='{0}/dataplane.svg'", o.out),
                    SLUICE_BENCH_DIR "/dataplane.gp"})) {
    fmt::print("wrote {}/dataplane.svg\n", o.out);
  } else {
    fmt::print("gnuplot failed or missing: no SVG\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--services") {
      o.services.clear();
      for (const auto& s : split(v)) o.services.push_back(uint32_t(std::stoul(s)));
    } else if (k == "--endpoints") o.endpoints = uint32_t(std::stoul(v));
    else if (k == "--connections") o.connections = std::stoi(v);
    else if (k == "--warmup") o.warmup = std::stoi(v);
    else if (k == "--batch") o.batch = std::stoi(v);
    else if (k == "--impls") o.impls = split(v);
    else if (k == "--out") o.out = v;
    else {
      fmt::print(stderr, "unknown option {}\n", k);
      return 2;
    }
  }
  if (argc % 2 == 0) {
    fmt::print(stderr, "usage: sluice-latency [--services 1,1000,10000] [--endpoints 10] [--connections 2000] "
                       "[--warmup 100] [--batch 50] [--impls sluice,iptables-legacy,iptables-nft] [--out DIR]\n");
    return 2;
  }
  if (geteuid() != 0) {
    fmt::print(stderr, "sluice-latency: needs root (network namespaces)\n");
    return 2;
  }
  if (o.endpoints < 1 || o.endpoints > 50 || o.connections < 1 || o.connections > 100000 || o.batch < 1 || o.warmup < 0 || o.services.empty() ||
      std::any_of(o.services.begin(), o.services.end(), [](uint32_t n) { return n < 1 || n > 60000; })) {
    fmt::print(stderr, "sluice-latency: 1..50 endpoints, 1..100000 connections, 1..60000 Services\n");
    return 2;
  }
  char tmpl[] = "/tmp/sluice-latency-XXXXXX";
  if (!mkdtemp(tmpl)) return 1;
  const std::string tmpdir = tmpl;
  std::string kernel = "?";
  if (auto u = testbed::run({"uname", "-r"})) kernel = u->substr(0, u->find('\n'));
  for (const auto& impl : o.impls)
    if (impl != "sluice" && impl != "iptables-legacy" && impl != "iptables-nft") {
      fmt::print(stderr, "unknown ruleset {}\n", impl);
      return 2;
    }
  std::vector<Setup> setups;
  setups.push_back({"none"});
  for (const auto& impl : o.impls)
    for (uint32_t n : o.services) setups.push_back({impl, n});
  int rc = 0;
  for (Setup& s : setups) {
    const auto t0 = Clock::now();
    if (Status st = prepare(s, o, tmpdir); !st) {
      fmt::print(stderr, "{} × {}: {}\n", s.impl, s.services, st.toString());
      rc = 1;
      break;
    }
    fmt::print("ready: {:16s} {:6d} Services (load {:.2f} s, setup {:.1f} s)\n", s.impl, s.services,
               std::isnan(s.loadSeconds) ? 0.0 : s.loadSeconds, std::chrono::duration<double>(Clock::now() - t0).count());
    std::fflush(stdout);
  }
  std::filesystem::remove_all(tmpdir);
  if (rc == 0) {
    if (Status st = runAll(setups, o); !st) {
      fmt::print(stderr, "measuring: {}\n", st.toString());
      rc = 1;
    } else {
      rc = writeResults(o, setups, kernel);
    }
  }
  return rc;
}
