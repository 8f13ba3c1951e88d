// weighted-agent: a node agent with its own discovery. Services and weighted backends come
// from a small config file (examples/weighted-backends.conf) instead of Kubernetes; a custom
// sluice::Source delivers them into the library's StateStore, and a SyncRunner keeps the
// kernel's nftables table in step — on every change of the file — until SIGTERM/SIGINT.
//
//   weighted-agent --config FILE [--node NAME] [--dry-run | --once]
//     --dry-run  plan against the shipped FakeBackend, print the ruleset, exit (no kernel)
//     --once     commit once into this network namespace's kernel and exit
//   (neither)    run: commit now and after every change of FILE; stop on SIGTERM, rules stay
//
// Try it without touching your host's rules: `unshare --net weighted-agent --config F --once`.
// Replace ConfigFileSource with your discovery (Consul, DNS SRV, a cloud API): the contract is
// in sluice/source.h — deliver complete sets, then say synced.
#include <signal.h>

#include <cctype>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "sluice/dataplane.h"
#include "sluice/nft/backend.h"
#include "sluice/source.h"
#include "sluice/state_store.h"
#include "sluice/sync_runner.h"

using namespace sluice;

struct Declared {  // what one config file declares
  std::vector<Service> services;
  std::vector<EndpointSlice> slices;
  std::vector<Problem> problems;
};

// Parses the config: one Service per `service` line, one slice per Service holding its
// `backend` lines. A bad line becomes a Problem naming "FILE:LINE"; the others still count.
Declared parseConfig(std::istream& in, const std::string& file) {
  std::map<ObjectName, Service> services;
  std::map<ObjectName, EndpointSlice> slices;
  Declared d;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    std::istringstream words(line.substr(0, line.find('#')));
    std::vector<std::string> w{std::istream_iterator<std::string>(words), {}};
    if (w.empty()) continue;
    auto bad = [&](const std::string& reason) { d.problems.push_back({file + ":" + std::to_string(n), w[0], reason}); };
    const size_t slash = w.size() > 1 ? w[1].find('/') : std::string::npos;
    if (slash == std::string::npos) { bad("expected NAMESPACE/NAME"); continue; }
    const ObjectName id{w[1].substr(0, slash), w[1].substr(slash + 1)};
    if (w[0] == "service" && w.size() == 5) {
      auto vip = IPAddress::parse(w[2]);
      unsigned port = 0, target = 0;
      char proto[8] = {};
      if (std::sscanf(w[3].c_str(), "%u/%7s", &port, proto) != 2 || std::sscanf(w[4].c_str(), "%u", &target) != 1) {
        bad("expected 'service NS/NAME VIP PORT/PROTO TARGET-PORT'");
        continue;
      }
      for (char* c = proto; *c; ++c) *c = char(std::toupper(*c));
      auto protocol = parseProtocol(proto);
      if (!vip || !protocol) { bad("bad VIP or protocol (tcp, udp, sctp)"); continue; }
      Service svc;  // the planner validates ports and addresses further and reports by field
      svc.id = id;
      svc.clusterIPs = {*vip};
      svc.ports = {{"main", *protocol, uint16_t(port), 0}};
      EndpointSlice slice;
      slice.id = {id.ns, id.name + "-agent"};
      slice.serviceName = id.name;
      slice.addressType = vip->family();
      slice.ports = {{"main", *protocol, uint16_t(target)}};
      services[id] = svc;
      slices[id] = slice;
    } else if (w[0] == "backend" && (w.size() == 3 || w.size() == 4)) {
      auto ip = IPAddress::parse(w[2]);
      if (!slices.count(id)) { bad("backend of a Service not declared above"); continue; }
      if (!ip) { bad("'" + w[2] + "' is not an IP address"); continue; }
      unsigned weight = 1;  // weights are a sluice extension; Kubernetes endpoints all weigh 1
      if (w.size() == 4 && std::sscanf(w[3].c_str(), "%u", &weight) != 1) { bad("weight must be a number"); continue; }
      Endpoint e;
      e.addresses = {*ip};
      e.weight = weight;
      slices[id].endpoints.push_back(e);
    } else {
      bad("expected 'service NS/NAME VIP PORT/PROTO TARGET-PORT' or 'backend NS/NAME IP [WEIGHT]'");
    }
  }
  for (auto& [id, s] : services) d.services.push_back(s);
  for (auto& [id, s] : slices) d.slices.push_back(s);
  return d;
}

// The custom Source: delivers the whole file at start, then again whenever it changes.
class ConfigFileSource : public Source {
 public:
  explicit ConfigFileSource(std::string path) : path_(std::move(path)) {}
  ~ConfigFileSource() override { stop(); }
  std::string name() const override { return "agent-config:" + path_; }

  Status start(StateSink& sink) override {
    if (Status st = deliver(sink); !st) return st;  // never start on an unreadable config
    sink.synced(ResourceKind::kService);            // complete: the runner may program now
    sink.synced(ResourceKind::kEndpointSlice);
    thread_ = std::thread([this, &sink] { watch(sink); });
    return Status::ok();
  }
  void stop() override {
    { std::lock_guard lock(mu_); stopping_ = true; }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  Status deliver(StateSink& sink) {
    std::ifstream in(path_);
    if (!in) return Status(Code::kNotFound, "cannot read " + path_);
    Declared d = parseConfig(in, path_);
    std::set<std::string> now;
    for (Problem& p : d.problems) now.insert(p.object), sink.problem(std::move(p));
    for (const std::string& old : problemObjects_)
      if (!now.count(old)) sink.problemCleared(old);  // that line is fine now
    problemObjects_ = std::move(now);
    sink.replaceServices(std::move(d.services));  // complete sets: what is gone gets removed
    sink.replaceSlices(std::move(d.slices));
    return Status::ok();
  }
  // Polls the file's mtime once a second: simple and enough for a hand-edited file.
  void watch(StateSink& sink) {
    std::error_code ec;
    auto seen = std::filesystem::last_write_time(path_, ec);
    std::unique_lock lock(mu_);
    while (!cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stopping_; })) {
      auto now = std::filesystem::last_write_time(path_, ec);
      if (ec || now == seen) continue;
      seen = now;
      if (Status st = deliver(sink); !st) std::fprintf(stderr, "reload: %s\n", st.toString().c_str());
    }
  }

  std::string path_;
  std::set<std::string> problemObjects_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

// Says what each sync did (called on the runner's thread).
struct SyncLog : SyncObserver {
  void onSync(const SyncReport& r) override {
    std::printf("sync %s: %s, %zu Services planned, %zu operations, %.2f ms\n", r.full ? "full" : "partial",
                r.status ? "committed" : r.status.toString().c_str(), r.servicesPlanned, r.operations,
                std::chrono::duration<double, std::milli>(r.duration).count());
    std::fflush(stdout);
  }
};

int main(int argc, char** argv) {
  std::string config, node = "node-1";
  bool dryRun = false, once = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) config = argv[++i];
    else if (a == "--node" && i + 1 < argc) node = argv[++i];
    else if (a == "--dry-run") dryRun = true;
    else if (a == "--once") once = true;
    else { config.clear(); break; }  // unknown flag: print the usage
  }
  if (config.empty()) { std::fprintf(stderr, "usage: %s --config FILE [--node NAME] [--dry-run|--once]\n", argv[0]); return 2; }

  // Signals are taken by sigwait() below; blocked before any thread starts, so every thread
  // inherits the mask and none is interrupted.
  sigset_t stopSignals;
  sigemptyset(&stopSignals);
  for (int s : {SIGTERM, SIGINT}) sigaddset(&stopSignals, s);
  pthread_sigmask(SIG_BLOCK, &stopSignals, nullptr);

  ProxyConfig cfg;
  cfg.nodeName = node;
  cfg.clusterCIDRs = {IPPrefix::parse("198.18.0.0/16").value()};  // pods: not masqueraded
  nft::FakeBackend fake;
  std::unique_ptr<nft::NetlinkBackend> kernel;
  if (!dryRun) {
    auto opened = nft::NetlinkBackend::open({});  // this process's network namespace
    if (!opened) { std::fprintf(stderr, "netlink: %s\n", opened.status().toString().c_str()); return 1; }
    kernel = std::move(opened).value();
  }
  DataPlane dataplane(cfg, kernel ? static_cast<nft::Backend&>(*kernel) : fake);
  StateStore store;  // desired state; could be fed by several sources at once
  SyncLog log;
  ConfigFileSource source(config);
  if (Status st = source.start(store.sink(source.name())); !st) {
    std::fprintf(stderr, "%s\n", st.toString().c_str());
    return 1;
  }
  auto printProblems = [&] {
    for (const auto& [object, list] : store.problems())  // the source's
      for (const Problem& p : list) std::printf("problem: %s\n", p.toString().c_str());
    for (const auto& [service, list] : dataplane.problems())  // the planner's
      for (const Problem& p : list) std::printf("problem: %s\n", p.toString().c_str());
  };

  if (dryRun || once) {
    Status st = SyncRunner(store, dataplane, {}, &log).syncOnce();  // the store is ready after start()
    source.stop();
    if (dryRun && st) std::printf("%s", fake.dump().c_str());
    printProblems();
    return st ? 0 : 1;
  }
  SyncRunner runner(store, dataplane, {}, &log);
  runner.start();  // syncs now, then on every change, and a full sync every 30 s
  int sig = 0;
  sigwait(&stopSignals, &sig);
  std::printf("%s: stopping; the rules stay in place\n", strsignal(sig));
  source.stop();
  runner.stop();
  return 0;
}
