// The node proxy's configuration: flags, config file, precedence, validation; and the small
// library pieces sluiced is made of (status page, logging, conntrack statistics, cleanup).
#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <sys/wait.h>

#include <nlohmann/json.hpp>

#include "sluice/cleanup.h"
#include "sluice/logging.h"
#include "sluice/node_status.h"
#include "sluice/proxy_options.h"

using namespace sluice;
using namespace std::chrono_literals;

TEST_CASE("parseDuration: Go's syntax") {
  CHECK(parseDuration("30s").value() == 30s);
  CHECK(parseDuration("300ms").value() == 300ms);
  CHECK(parseDuration("1m30s").value() == 90s);
  CHECK(parseDuration("1.5h").value() == 90min);
  CHECK(parseDuration("2h45m").value() == 165min);
  CHECK(parseDuration("0").value() == 0s);
  CHECK(parseDuration("-1s").value() == -1s);
  CHECK(parseDuration("10us").value() == 10us);
  for (const char* bad : {"", "10", "abc", "1x", "s", "1..5s", "1s2"}) {
    CHECK_MESSAGE(parseDuration(bad).status().code() == Code::kInvalidArgument, bad);
  }
  CHECK(formatDuration(90s) == "1m30s");
  CHECK(formatDuration(500ms) == "500ms");
  CHECK(formatDuration(2h) == "2h0m0s");
}

TEST_CASE("flags: each parses its value and errors name the flag") {
  ProxyOptions o;
  REQUIRE(applyFlag(o, "--sync-period", "10s").isOk());
  CHECK(o.syncPeriod == 10s);
  REQUIRE(applyFlag(o, "--cluster-cidr", "198.18.0.0/16, fd00::/64").isOk());
  CHECK(o.clusterCIDRs.size() == 2);
  REQUIRE(applyFlag(o, "--masquerade-all", "true").isOk());
  CHECK(o.masqueradeAll);
  REQUIRE(applyFlag(o, "--source", "file:/tmp/x.yaml").isOk());
  CHECK(o.source == "file:/tmp/x.yaml");

  Status st = applyFlag(o, "--sync-period", "soon");
  CHECK(st.code() == Code::kInvalidArgument);
  CHECK(st.message().rfind("--sync-period: ", 0) == 0);
  CHECK(applyFlag(o, "--cluster-cidr", "198.18.0.0/99").message().find("--cluster-cidr") != std::string::npos);
  CHECK(applyFlag(o, "--source", "etcd").message().find("--source") != std::string::npos);
  CHECK(applyFlag(o, "--source", "file:").code() == Code::kInvalidArgument);
  CHECK(applyFlag(o, "--masquerade-bit", "32").code() == Code::kInvalidArgument);
  CHECK(applyFlag(o, "--log-format", "xml").code() == Code::kInvalidArgument);
  CHECK(applyFlag(o, "--no-such-flag", "1").message() == "unknown flag --no-such-flag");
}

TEST_CASE("every flag is documented and has a parser") {
  std::set<std::string> seen;
  for (const FlagSpec& f : proxyFlags()) {
    CHECK_MESSAGE(f.flag.rfind("--", 0) == 0, f.flag);
    CHECK_MESSAGE(!f.help.empty(), f.flag);
    CHECK_MESSAGE(f.apply != nullptr, f.flag);
    CHECK_MESSAGE(seen.insert(f.flag).second, f.flag);
  }
  for (const char* kubeProxyFlag : {"--kubeconfig", "--master", "--hostname-override", "--cluster-cidr",
                                    "--nodeport-addresses", "--masquerade-all", "--min-sync-period", "--sync-period",
                                    "--healthz-bind-address", "--metrics-bind-address", "--cleanup", "--config"}) {
    CHECK_MESSAGE(seen.count(kubeProxyFlag), kubeProxyFlag);
  }
}

TEST_CASE("config file: a KubeProxyConfiguration subset plus sluice's section") {
  ProxyOptions o;
  std::vector<std::string> warnings;
  const char* yaml = R"(
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig
  qps: 5
hostnameOverride: node-7
clusterCIDR: 198.18.0.0/16
nodePortAddresses: [198.18.0.0/24, fd00::/64]
metricsBindAddress: 127.0.0.1:9999
nftables:
  masqueradeAll: true
  syncPeriod: 15s
  minSyncPeriod: 500ms
conntrack:
  maxPerCore: 32768
logging:
  format: json
sluice:
  source: file:/etc/sluice/s.yaml
  drainTimeout: 45s
  serviceClusterIPRange: 198.19.0.0/16
  lease:
    etcdEndpoints: [http://127.0.0.1:2379]
    ttl: 5s
)";
  REQUIRE(applyConfigYaml(o, yaml, "cfg.yaml", &warnings).isOk());
  CHECK(o.kubeconfig == "/var/lib/kube-proxy/kubeconfig");
  CHECK(o.hostnameOverride == "node-7");
  CHECK(o.clusterCIDRs == std::vector<IPPrefix>{IPPrefix::parse("198.18.0.0/16").value()});
  CHECK(o.nodePortAddresses == std::vector<std::string>{"198.18.0.0/24", "fd00::/64"});
  CHECK(o.metricsBindAddress == "127.0.0.1:9999");
  CHECK(o.masqueradeAll);
  CHECK(o.syncPeriod == 15s);
  CHECK(o.minSyncPeriod == 500ms);
  CHECK(o.logFormat == "json");
  CHECK(o.source == "file:/etc/sluice/s.yaml");
  CHECK(o.drainTimeout == 45s);
  CHECK(o.leaseEtcdEndpoints == std::vector<std::string>{"http://127.0.0.1:2379"});
  CHECK(o.leaseTTL == 5s);
  // kube-proxy settings sluice does not use are named, not fatal.
  REQUIRE(warnings.size() == 2);
  CHECK(warnings[0].find("clientConnection.qps") != std::string::npos);
  CHECK(warnings[1].find("conntrack.maxPerCore") != std::string::npos);
  CHECK(ipFamilies(o) == std::vector<IPFamily>{IPFamily::kV4});
}

TEST_CASE("config file: aliases of kube-proxy's iptables section") {
  ProxyOptions o;
  REQUIRE(applyConfigYaml(o, "iptables:\n  masqueradeAll: true\n  syncPeriod: 1m\n", "f").isOk());
  CHECK(o.masqueradeAll);
  CHECK(o.syncPeriod == 60s);
}

TEST_CASE("config file: errors name the file and the field") {
  ProxyOptions o;
  Status st = applyConfigYaml(o, "nftables:\n  syncPeriod: often\n", "/etc/sluice/c.yaml");
  CHECK(st.code() == Code::kInvalidArgument);
  CHECK(st.message().find("/etc/sluice/c.yaml: nftables.syncPeriod: ") == 0);
  CHECK(applyConfigYaml(o, "sluice:\n  sorce: kubernetes\n", "f").message() == "f: sluice.sorce: unknown field");
  CHECK(applyConfigYaml(o, "bogusTopLevel: 1\n", "f").message() == "f: bogusTopLevel: unknown field");
  CHECK(applyConfigYaml(o, "kind: Deployment\n", "f").message().find("kind") != std::string::npos);
  CHECK(applyConfigYaml(o, "[1, 2", "f").message().find("f: not YAML") == 0);
  CHECK(applyConfigYaml(o, "- a\n- b\n", "f").code() == Code::kInvalidArgument);
}

TEST_CASE("resolveOptions: defaults < config file < flags, validation names flag and field") {
  const std::string path = "/tmp/sluice-options-test-" + std::to_string(::getpid()) + ".yaml";
  {
    std::ofstream f(path);
    f << "nftables:\n  syncPeriod: 20s\n  minSyncPeriod: 2s\nhostnameOverride: from-file\n";
  }
  auto o = resolveOptions({{"--hostname-override", "from-flag"}, {"--config", path}});
  REQUIRE(o);
  CHECK(o->syncPeriod == 20s);             // from the file
  CHECK(o->minSyncPeriod == 2s);           // from the file
  CHECK(o->hostnameOverride == "from-flag");  // the flag wins, whatever its position
  CHECK(o->drainTimeout == 30s);           // default

  auto bad = resolveOptions({{"--config", path}, {"--sync-period", "1s"}});
  REQUIRE_FALSE(bad);
  CHECK(bad.status().message() == "--sync-period / nftables.syncPeriod: must be at least --min-sync-period (2s)");

  auto missing = resolveOptions({{"--config", "/nonexistent/sluice.yaml"}});
  REQUIRE_FALSE(missing);
  CHECK(missing.status().message().find("--config: cannot read /nonexistent/sluice.yaml") == 0);
  std::remove(path.c_str());
}

TEST_CASE("validate: each problem names its flag") {
  ProxyOptions o;
  o.metricsBindAddress = "localhost:80";
  o.nodePortAddresses = {"primary", "198.18.0.0/24"};
  o.serviceClusterIPRanges = {IPPrefix::parse("198.18.0.0/16").value(), IPPrefix::parse("198.19.0.0/16").value()};
  o.syncPeriod = 0s;
  auto problems = validate(o);
  std::set<std::string> fields;
  for (const Problem& p : problems) fields.insert(p.field);
  CHECK(fields == std::set<std::string>{"--metrics-bind-address / metricsBindAddress",
                                        "--nodeport-addresses / nodePortAddresses",
                                        "--service-cluster-ip-range / sluice.serviceClusterIPRange",
                                        "--sync-period / nftables.syncPeriod"});
  CHECK(validate(ProxyOptions{}).empty());
}

TEST_CASE("derived settings: node name, source, families, planner config") {
  ProxyOptions o;
  o.hostnameOverride = " Node-A ";
  CHECK(nodeName(o) == "node-a");
  o.source = "kubernetes";
  CHECK(resolveSource(o) == "kubernetes");
  o.source.clear();
  o.kubeconfig = "/k";
  CHECK(resolveSource(o) == "kubernetes");
  CHECK(ipFamilies(o) == std::vector<IPFamily>{IPFamily::kV4, IPFamily::kV6});
  o.clusterCIDRs = {IPPrefix::parse("fd00:1::/64").value(), IPPrefix::parse("198.18.0.0/16").value()};
  o.serviceClusterIPRanges = {IPPrefix::parse("fd00:9::/112").value()};
  CHECK(ipFamilies(o) == std::vector<IPFamily>{IPFamily::kV6});
  o.masqueradeBit = 5;
  ProxyConfig cfg = toProxyConfig(o, IPFamily::kV6);
  CHECK(cfg.family == IPFamily::kV6);
  CHECK(cfg.nodeName == "node-a");
  CHECK(cfg.clusterCIDRs == std::vector<IPPrefix>{IPPrefix::parse("fd00:1::/64").value()});
  CHECK(cfg.masqueradeMark() == 0x20);
}

TEST_CASE("status page: JSON fields and escaped HTML") {
  NodeStatus s;
  s.nodeName = "node<1>";
  s.source = "file:/a&b";
  FamilySyncStatus f;
  f.syncs = 3;
  f.lastOk = true;
  f.services = 7;
  s.families = {f};
  s.problems = {{"Service default/x", "spec.ports[0].port", "port <script>alert(1)</script> is 0"}};
  s.healthCheckNodePorts = {{{"default", "lb"}, {32000, 2}}};
  auto j = nlohmann::json::parse(statusJson(s));
  CHECK(j["nodeName"] == "node<1>");
  CHECK(j["families"][0]["family"] == "IPv4");
  CHECK(j["families"][0]["services"] == 7);
  CHECK(j["problems"][0]["field"] == "spec.ports[0].port");
  CHECK(j["healthCheckNodePorts"][0]["nodePort"] == 32000);
  const std::string html = statusHtml(s);
  CHECK(html.find("<script>") == std::string::npos);
  CHECK(html.find("&lt;script&gt;alert(1)&lt;/script&gt;") != std::string::npos);
  CHECK(html.find("node&lt;1&gt;") != std::string::npos);
  CHECK(html.find("file:/a&amp;b") != std::string::npos);
}

TEST_CASE("logging: JSON escaping and setup errors") {
  CHECK(jsonEscape("a \"b\"\n\\ \x01") == "a \\\"b\\\"\\n\\\\ \\u0001");
  CHECK(setupLogging("xml", "info").code() == Code::kInvalidArgument);
  CHECK(setupLogging("text", "loud").code() == Code::kInvalidArgument);
}

TEST_CASE("cleanup: removes the proxy's table and nothing else, absent is fine") {
  nft::FakeBackend fake;
  ProxyConfig cfg;
  nft::Transaction setup;
  setup.add(nft::Table{cfg.table(), ""});
  setup.add(nft::Table{{nft::Family::kIPv4, "other"}, ""});
  REQUIRE(fake.apply(setup).isOk());
  REQUIRE(removeProxyTable(cfg, fake).isOk());
  const std::string dump = fake.dump();
  CHECK(dump.find("table ip sluice") == std::string::npos);
  CHECK(dump.find("table ip other") != std::string::npos);
  CHECK(removeProxyTable(cfg, fake).isOk());  // again: nothing to remove
}

#ifdef SLUICED_PATH
namespace {
struct Run {
  int code = -1;
  std::string output;
};
Run runSluiced(const std::string& args) {
  Run r;
  FILE* p = ::popen((std::string(SLUICED_PATH) + " " + args + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}
}  // namespace

TEST_CASE("sluiced binary: --help documents every flag") {
  Run r = runSluiced("--help");
  CHECK(r.code == 0);
  for (const FlagSpec& f : proxyFlags()) CHECK_MESSAGE(r.output.find(f.flag + " ") != std::string::npos, f.flag);
}

TEST_CASE("sluiced binary: bad flags and configuration exit 2 naming the culprit") {
  Run unknown = runSluiced("--frobnicate");
  CHECK(unknown.code == 2);
  CHECK(unknown.output.find("--frobnicate") != std::string::npos);

  Run badValue = runSluiced("--sync-period forever");
  CHECK(badValue.code == 2);
  CHECK(badValue.output.find("--sync-period: \"forever\" is not a duration") != std::string::npos);

  Run combo = runSluiced("--min-sync-period 1m --sync-period 10s");
  CHECK(combo.code == 2);
  CHECK(combo.output.find("--sync-period / nftables.syncPeriod: must be at least --min-sync-period") != std::string::npos);

  const std::string path = "/tmp/sluiced-cli-test-" + std::to_string(::getpid()) + ".yaml";
  {
    std::ofstream f(path);
    f << "sluice:\n  drainTimeout: whenever\n";
  }
  Run badFile = runSluiced("--config " + path);
  CHECK(badFile.code == 2);
  CHECK(badFile.output.find(path + ": sluice.drainTimeout: ") != std::string::npos);
  std::remove(path.c_str());

  Run missing = runSluiced("--config /nonexistent/x.yaml");
  CHECK(missing.code == 2);
  CHECK(missing.output.find("/nonexistent/x.yaml") != std::string::npos);
}
#endif

TEST_CASE("lease flags: backend, Service, API address and token, what each backend requires") {
  using Given = std::vector<std::pair<std::string, std::string>>;
  auto o = resolveOptions(Given{{"--lease-backend", "embedded"}, {"--lease-service", "test/web"},
                                {"--lease-token-file", "/run/sluice/lease-token"},
                                {"--lease-reconcile-interval", "250ms"}, {"--lease-bind-address", "127.0.0.1:10300"}});
  REQUIRE_MESSAGE(o.isOk(), o.status().toString());
  CHECK(resolveLeaseBackend(*o) == "embedded");
  CHECK(o->leaseService == ObjectName{"test", "web"});
  CHECK(o->leaseInterval == 250ms);
  CHECK(o->leaseBindAddress == "127.0.0.1:10300");
  // Off by default; etcd endpoints alone still mean the etcd backend.
  CHECK(resolveLeaseBackend(ProxyOptions{}).empty());
  ProxyOptions etcd;
  etcd.leaseEtcdEndpoints = {"http://127.0.0.1:2379"};
  CHECK(resolveLeaseBackend(etcd) == "etcd");

  ProxyOptions bad;
  CHECK(applyFlag(bad, "--lease-backend", "zookeeper").message().find("--lease-backend") != std::string::npos);
  CHECK(applyFlag(bad, "--lease-service", "web").code() == Code::kInvalidArgument);
  CHECK(applyFlag(bad, "--lease-service", "a/b/c").code() == Code::kInvalidArgument);
  auto missing = resolveOptions(Given{{"--lease-backend", "embedded"}});
  REQUIRE_FALSE(missing.isOk());
  CHECK(missing.status().message().find("--lease-service") != std::string::npos);
  CHECK(missing.status().message().find("--lease-token-file") != std::string::npos);
  auto noEtcd = resolveOptions(Given{{"--lease-backend", "etcd"}, {"--lease-service", "a/b"}});
  CHECK(noEtcd.status().message().find("--lease-etcd-endpoints") != std::string::npos);
  auto badBind = resolveOptions(Given{{"--lease-backend", "kubernetes"}, {"--lease-service", "a/b"},
                                      {"--lease-bind-address", "nowhere"}});
  CHECK(badBind.status().message().find("--lease-bind-address") != std::string::npos);

  std::string yaml = "sluice:\n  lease:\n    backend: kubernetes\n    service: kube-system/api\n    reconcileInterval: 2s\n";
  ProxyOptions fromFile;
  REQUIRE(applyConfigYaml(fromFile, yaml, "cfg.yaml").isOk());
  CHECK(fromFile.leaseBackend == "kubernetes");
  CHECK(fromFile.leaseService == ObjectName{"kube-system", "api"});
  CHECK(fromFile.leaseInterval == 2s);
}
