#include "sluice/proxy_options.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>

#include "sluice/http_server.h"

namespace sluice {

namespace {

Status invalid(std::string message) { return Status(Code::kInvalidArgument, std::move(message)); }

std::vector<std::string> splitList(const std::string& value) {
  std::vector<std::string> out;
  std::string item;
  std::istringstream in(value);
  while (std::getline(in, item, ',')) {
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

Result<bool> parseBool(const std::string& v) {
  std::string s = v;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  if (s == "true" || s == "1" || s == "t" || s == "yes") return true;
  if (s == "false" || s == "0" || s == "f" || s == "no") return false;
  return invalid(fmt::format("\"{}\" is not a boolean (true or false)", v));
}

Result<std::vector<IPPrefix>> parseCIDRs(const std::string& v) {
  std::vector<IPPrefix> out;
  for (const std::string& item : splitList(v)) {
    auto p = IPPrefix::parse(item);
    if (!p) return invalid(fmt::format("\"{}\" is not a CIDR (e.g. 10.96.0.0/12)", item));
    out.push_back(*p);
  }
  return out;
}

using Apply = std::function<Status(ProxyOptions&, const std::string&)>;

Apply stringField(std::string ProxyOptions::*field) {
  return [field](ProxyOptions& o, const std::string& v) {
    o.*field = v;
    return Status::ok();
  };
}

// A field set from what `parse` makes of the text; the parser's error is passed on.
template <typename T, typename Parse>
Apply parsedField(T ProxyOptions::*field, Parse parse) {
  return [field, parse](ProxyOptions& o, const std::string& v) -> Status {
    auto parsed = parse(v);
    if (!parsed) return parsed.status();
    o.*field = std::move(parsed).value();
    return Status::ok();
  };
}

Apply boolField(bool ProxyOptions::*field) { return parsedField(field, parseBool); }
Apply durationField(std::chrono::nanoseconds ProxyOptions::*field) {
  return parsedField(field, [](const std::string& v) { return parseDuration(v); });
}
Apply cidrsField(std::vector<IPPrefix> ProxyOptions::*field) { return parsedField(field, parseCIDRs); }

Apply listField(std::vector<std::string> ProxyOptions::*field) {
  return [field](ProxyOptions& o, const std::string& v) {
    o.*field = splitList(v);
    return Status::ok();
  };
}

std::vector<FlagSpec> buildFlags() {
  std::vector<FlagSpec> f;
  auto add = [&](std::string flag, std::string valueName, std::string field, std::string help, std::string def,
                 Apply apply) {
    f.push_back({std::move(flag), std::move(valueName), std::move(field), std::move(help), std::move(def), std::move(apply)});
  };
  add("--config", "FILE", "", "Config file: a KubeProxyConfiguration subset, sluice's own settings under `sluice:`; flags given on the command line override it", "",
      stringField(&ProxyOptions::configFile));
  add("--kubeconfig", "FILE", "clientConnection.kubeconfig", "Kubeconfig file with the API server and credentials", "",
      stringField(&ProxyOptions::kubeconfig));
  add("--master", "URL", "", "API server address (overrides the kubeconfig's)", "", stringField(&ProxyOptions::master));
  add("--source", "kubernetes|file:PATH", "sluice.source",
      "Where Services and EndpointSlices come from; default: kubernetes when a kubeconfig, --master or in-cluster config exists, else file:/etc/sluice/services.yaml",
      "auto", [](ProxyOptions& o, const std::string& v) -> Status {
        if (v != "kubernetes" && (v.rfind("file:", 0) != 0 || v.size() == 5))
          return invalid(fmt::format("\"{}\" is neither \"kubernetes\" nor \"file:PATH\"", v));
        o.source = v;
        return Status::ok();
      });
  add("--hostname-override", "NAME", "hostnameOverride", "This node's name (endpoints with this nodeName are local); default: the host name", "",
      stringField(&ProxyOptions::hostnameOverride));
  add("--cluster-cidr", "CIDR[,CIDR]", "clusterCIDR", "Pod CIDR(s): ClusterIP traffic from outside them is masqueraded", "",
      cidrsField(&ProxyOptions::clusterCIDRs));
  add("--service-cluster-ip-range", "CIDR[,CIDR]", "sluice.serviceClusterIPRange",
      "Service CIDR(s): also chooses the IP families to program (default: both)", "",
      cidrsField(&ProxyOptions::serviceClusterIPRanges));
  add("--nodeport-addresses", "CIDR[,CIDR]|primary", "nodePortAddresses",
      "Node IPs NodePorts and health-check ports answer on: those inside these CIDRs, or \"primary\"", "primary",
      listField(&ProxyOptions::nodePortAddresses));
  add("--masquerade-all", "", "nftables.masqueradeAll", "Masquerade every ClusterIP flow", "false",
      boolField(&ProxyOptions::masqueradeAll));
  add("--masquerade-bit", "0-31", "nftables.masqueradeBit", "Packet mark bit that marks flows to masquerade", "14",
      [](ProxyOptions& o, const std::string& v) -> Status {
        char* end = nullptr;
        long bit = std::strtol(v.c_str(), &end, 10);
        if (v.empty() || *end != '\0' || bit < 0 || bit > 31) return invalid(fmt::format("\"{}\" is not a bit number 0-31", v));
        o.masqueradeBit = static_cast<uint32_t>(bit);
        return Status::ok();
      });
  add("--min-sync-period", "DURATION", "nftables.minSyncPeriod", "Shortest time between two syncs (changes are batched)", "1s",
      durationField(&ProxyOptions::minSyncPeriod));
  add("--sync-period", "DURATION", "nftables.syncPeriod",
      "Longest time between two syncs; /healthz fails when a change waits longer than twice this", "30s",
      durationField(&ProxyOptions::syncPeriod));
  add("--drain-timeout", "DURATION", "sluice.drainTimeout",
      "Longest time a removed endpoint keeps its established flows before it leaves the kernel", "30s",
      durationField(&ProxyOptions::drainTimeout));
  add("--lease-backend", "embedded|etcd|kubernetes", "sluice.lease.backend",
      "Store of the endpoint-lease reconciler: embedded (served over HTTP at --lease-bind-address), etcd, or kubernetes (coordination.k8s.io Leases); default: off, etcd when --lease-etcd-endpoints is set",
      "", [](ProxyOptions& o, const std::string& v) -> Status {
        if (v != "embedded" && v != "etcd" && v != "kubernetes")
          return invalid(fmt::format("\"{}\" is not embedded, etcd or kubernetes", v));
        o.leaseBackend = v;
        return Status::ok();
      });
  add("--lease-service", "NAMESPACE/NAME", "sluice.lease.service",
      "The Service whose endpoints the leases are (its ports come from the Service's source)", "",
      [](ProxyOptions& o, const std::string& v) -> Status {
        const size_t slash = v.find('/');
        if (slash == std::string::npos || slash == 0 || slash + 1 == v.size() || v.find('/', slash + 1) != std::string::npos)
          return invalid(fmt::format("\"{}\" is not NAMESPACE/NAME", v));
        o.leaseService = {v.substr(0, slash), v.substr(slash + 1)};
        return Status::ok();
      });
  add("--lease-reconcile-interval", "DURATION", "sluice.lease.reconcileInterval",
      "How often the lease reconciler lists the leases; a dead registrant leaves within its TTL plus this", "10s",
      durationField(&ProxyOptions::leaseInterval));
  add("--lease-bind-address", "HOST:PORT", "sluice.lease.bindAddress",
      "Address of the embedded store's lease API (/v1/leases)", "127.0.0.1:10259",
      stringField(&ProxyOptions::leaseBindAddress));
  add("--lease-token-file", "FILE", "sluice.lease.tokenFile",
      "File holding the bearer token the embedded store's lease API requires (required with --lease-backend embedded)", "",
      stringField(&ProxyOptions::leaseTokenFile));
  add("--lease-etcd-endpoints", "URL[,URL]", "sluice.lease.etcdEndpoints",
      "etcd endpoint of the etcd lease backend (the first is used)", "", listField(&ProxyOptions::leaseEtcdEndpoints));
  add("--lease-etcd-cafile", "FILE", "sluice.lease.etcdCAFile",
      "CA bundle (PEM) that signed the etcd server's certificate, for https endpoints; default: the system's", "",
      stringField(&ProxyOptions::leaseEtcdCAFile));
  add("--lease-etcd-certfile", "FILE", "sluice.lease.etcdCertFile",
      "Client certificate (PEM) presented to etcd, for https endpoints", "", stringField(&ProxyOptions::leaseEtcdCertFile));
  add("--lease-etcd-keyfile", "FILE", "sluice.lease.etcdKeyFile", "Key (PEM) of --lease-etcd-certfile", "",
      stringField(&ProxyOptions::leaseEtcdKeyFile));
  add("--lease-prefix", "KEY", "sluice.lease.prefix",
      "etcd key prefix of endpoint leases; keys are PREFIX + NAMESPACE/NAME/ + identity", "/sluice/leases/",
      stringField(&ProxyOptions::leasePrefix));
  add("--lease-ttl", "DURATION", "sluice.lease.ttl", "Accepted for compatibility; unused (each registrant chooses its own TTL)", "15s",
      durationField(&ProxyOptions::leaseTTL));
  add("--healthz-bind-address", "HOST:PORT", "healthzBindAddress",
      "Address of /healthz and /livez (load balancers probe it); empty disables", "0.0.0.0:10256",
      stringField(&ProxyOptions::healthzBindAddress));
  add("--metrics-bind-address", "HOST:PORT", "metricsBindAddress",
      "Address of /metrics, /status, / (and /healthz, /livez); empty disables", "127.0.0.1:10249",
      stringField(&ProxyOptions::metricsBindAddress));
  add("--admin-token-file", "FILE", "sluice.adminTokenFile",
      "File holding a bearer token that /metrics and /status then require", "", stringField(&ProxyOptions::adminTokenFile));
  add("--cleanup", "", "", "Remove sluice's nftables tables and exit", "false", boolField(&ProxyOptions::cleanup));
  add("--netns", "NAME|PATH|PID", "sluice.netns", "Run the data plane and all servers inside this network namespace", "",
      stringField(&ProxyOptions::netns));
  add("--log-format", "text|json", "logging.format", "Log line format", "text",
      [](ProxyOptions& o, const std::string& v) -> Status {
        if (v != "text" && v != "json") return invalid(fmt::format("\"{}\" is neither text nor json", v));
        o.logFormat = v;
        return Status::ok();
      });
  add("--log-level", "LEVEL", "sluice.logLevel", "trace, debug, info, warn or error", "info",
      [](ProxyOptions& o, const std::string& v) -> Status {
        static const std::set<std::string> kLevels = {"trace", "debug", "info", "warn", "error"};
        if (!kLevels.count(v)) return invalid(fmt::format("\"{}\" is not one of trace, debug, info, warn, error", v));
        o.logLevel = v;
        return Status::ok();
      });
  return f;
}

// Other spellings of the same field: kube-proxy's iptables section and v1alpha2's top level.
const std::map<std::string, std::string>& fieldAliases() {
  static const std::map<std::string, std::string> kAliases = {
      {"iptables.masqueradeAll", "nftables.masqueradeAll"}, {"iptables.masqueradeBit", "nftables.masqueradeBit"},
      {"iptables.syncPeriod", "nftables.syncPeriod"},       {"iptables.minSyncPeriod", "nftables.minSyncPeriod"},
      {"linux.masqueradeAll", "nftables.masqueradeAll"},    {"syncPeriod", "nftables.syncPeriod"},
      {"minSyncPeriod", "nftables.minSyncPeriod"},
  };
  return kAliases;
}

// KubeProxyConfiguration's top-level fields: those sluice does not read are ignored with a
// warning, so a cluster's existing kube-proxy config file can be given as it is.
const std::set<std::string>& kubeProxyFields() {
  static const std::set<std::string> kFields = {
      "apiVersion", "kind", "bindAddress", "bindAddressHardFail", "clientConnection", "clusterCIDR",
      "configSyncPeriod", "conntrack", "detectLocal", "detectLocalMode", "enableProfiling", "featureGates",
      "healthzBindAddress", "hostnameOverride", "iptables", "ipvs", "linux", "logging", "metricsBindAddress",
      "minSyncPeriod", "mode", "nftables", "nodePortAddresses", "oomScoreAdj", "portRange",
      "showHiddenMetricsForVersion", "syncPeriod", "winkernel", "windowsRunAsService"};
  return kFields;
}

const FlagSpec* findByField(const std::string& field) {
  for (const FlagSpec& f : proxyFlags())
    if (!f.configField.empty() && f.configField == field) return &f;
  return nullptr;
}

const FlagSpec* findByFlag(const std::string& flag) {
  for (const FlagSpec& f : proxyFlags())
    if (f.flag == flag) return &f;
  return nullptr;
}

// Flattens YAML into "a.b.c" → scalar text; a sequence of scalars becomes a comma list.
Status flatten(const YAML::Node& node, const std::string& path, std::map<std::string, std::string>& out) {
  if (node.IsNull()) return Status::ok();
  if (node.IsScalar()) {
    out[path] = node.Scalar();
    return Status::ok();
  }
  if (node.IsSequence()) {
    std::vector<std::string> items;
    for (size_t i = 0; i < node.size(); ++i) {
      if (!node[i].IsScalar()) return invalid(fmt::format("{}[{}]: expected a string", path, i));
      items.push_back(node[i].Scalar());
    }
    out[path] = fmt::format("{}", fmt::join(items, ","));
    return Status::ok();
  }
  if (node.IsMap()) {
    for (const auto& kv : node) {
      const std::string key = kv.first.as<std::string>();
      if (Status st = flatten(kv.second, path.empty() ? key : path + "." + key, out); !st) return st;
    }
  }
  return Status::ok();
}

std::string describe(const FlagSpec& f) {
  return f.configField.empty() ? f.flag : fmt::format("{} / {}", f.flag, f.configField);
}

}  // namespace

const std::vector<FlagSpec>& proxyFlags() {
  static const std::vector<FlagSpec> kFlags = buildFlags();
  return kFlags;
}

Status applyFlag(ProxyOptions& options, const std::string& flag, const std::string& value) {
  const FlagSpec* f = findByFlag(flag);
  if (!f) return invalid(fmt::format("unknown flag {}", flag));
  if (Status st = f->apply(options, value); !st) return invalid(fmt::format("{}: {}", flag, st.message()));
  return Status::ok();
}

Status applyConfigYaml(ProxyOptions& options, const std::string& yamlText, const std::string& origin,
                       std::vector<std::string>* warnings) {
  YAML::Node root;
  try {
    root = YAML::Load(yamlText);
  } catch (const YAML::Exception& e) {
    return invalid(fmt::format("{}: not YAML: {}", origin, e.what()));
  }
  if (root.IsNull()) return Status::ok();
  if (!root.IsMap()) return invalid(fmt::format("{}: expected a mapping at the top", origin));
  std::map<std::string, std::string> fields;
  if (Status st = flatten(root, "", fields); !st) return invalid(fmt::format("{}: {}", origin, st.message()));

  auto warn = [&](std::string w) {
    if (warnings) warnings->push_back(std::move(w));
  };
  for (const auto& [path, value] : fields) {
    std::string field = path;
    if (auto alias = fieldAliases().find(path); alias != fieldAliases().end()) field = alias->second;
    if (path == "apiVersion") {
      if (value.rfind("kubeproxy.config.k8s.io/", 0) != 0)
        return invalid(fmt::format("{}: apiVersion: \"{}\" is not kubeproxy.config.k8s.io/*", origin, value));
      continue;
    }
    if (path == "kind") {
      if (value != "KubeProxyConfiguration")
        return invalid(fmt::format("{}: kind: \"{}\" is not KubeProxyConfiguration", origin, value));
      continue;
    }
    if (path == "mode") {
      if (!value.empty() && value != "nftables") warn(fmt::format("{}: mode \"{}\" ignored: sluice always programs nftables", origin, value));
      continue;
    }
    if (const FlagSpec* f = findByField(field)) {
      if (Status st = f->apply(options, value); !st)
        return invalid(fmt::format("{}: {}: {}", origin, path, st.message()));
      continue;
    }
    const std::string top = path.substr(0, path.find('.'));
    if (top == "sluice" || !kubeProxyFields().count(top))
      return invalid(fmt::format("{}: {}: unknown field", origin, path));
    warn(fmt::format("{}: {}: kube-proxy setting not used by sluice, ignored", origin, path));
  }
  return Status::ok();
}

Status loadConfigFile(ProxyOptions& options, const std::string& path, std::vector<std::string>* warnings) {
  std::ifstream in(path);
  if (!in) return Status::fromErrno(errno ? errno : ENOENT, fmt::format("--config: cannot read {}", path));
  std::ostringstream text;
  text << in.rdbuf();
  return applyConfigYaml(options, text.str(), path, warnings);
}

Result<ProxyOptions> resolveOptions(const std::vector<std::pair<std::string, std::string>>& given,
                                    std::vector<std::string>* warnings) {
  ProxyOptions o;
  for (const auto& [flag, value] : given) {
    if (flag != "--config") continue;
    if (Status st = applyFlag(o, flag, value); !st) return st;
  }
  if (!o.configFile.empty()) {
    if (Status st = loadConfigFile(o, o.configFile, warnings); !st) return st;
  }
  for (const auto& [flag, value] : given) {
    if (Status st = applyFlag(o, flag, value); !st) return st;
  }
  std::vector<Problem> problems = validate(o);
  if (!problems.empty()) {
    std::string text;
    for (const Problem& p : problems) text += fmt::format("{}{}: {}", text.empty() ? "" : "\n", p.field, p.reason);
    return invalid(text);
  }
  return o;
}

std::vector<Problem> validate(const ProxyOptions& o) {
  std::vector<Problem> problems;
  auto report = [&](const std::string& flag, std::string reason) {
    const FlagSpec* f = findByFlag(flag);
    problems.push_back({"sluiced configuration", f ? describe(*f) : flag, std::move(reason)});
  };
  if (o.syncPeriod <= std::chrono::nanoseconds::zero()) report("--sync-period", "must be greater than 0");
  if (o.minSyncPeriod < std::chrono::nanoseconds::zero()) report("--min-sync-period", "must not be negative");
  if (o.syncPeriod < o.minSyncPeriod)
    report("--sync-period", fmt::format("must be at least --min-sync-period ({})", formatDuration(o.minSyncPeriod)));
  if (o.drainTimeout < std::chrono::nanoseconds::zero()) report("--drain-timeout", "must not be negative");
  if (!o.leaseEtcdEndpoints.empty() && o.leaseTTL < std::chrono::seconds(1))
    report("--lease-ttl", "must be at least 1s");
  const std::string leases = resolveLeaseBackend(o);
  if (!leases.empty()) {
    if (o.leaseService.name.empty()) report("--lease-service", "is required with --lease-backend " + leases);
    if (o.leaseInterval <= std::chrono::nanoseconds::zero()) report("--lease-reconcile-interval", "must be greater than 0");
    if (leases == "embedded" && o.leaseTokenFile.empty())
      report("--lease-token-file", "is required with --lease-backend embedded (the lease API is never open)");
    if (leases == "etcd" && o.leaseEtcdEndpoints.empty())
      report("--lease-etcd-endpoints", "is required with --lease-backend etcd");
  }
  if (o.leaseEtcdCertFile.empty() != o.leaseEtcdKeyFile.empty()) {
    const bool noCert = o.leaseEtcdCertFile.empty();
    report(noCert ? "--lease-etcd-certfile" : "--lease-etcd-keyfile",
           std::string("is required with ") + (noCert ? "--lease-etcd-keyfile" : "--lease-etcd-certfile"));
  }
  for (const auto& [flag, value] : {std::pair{"--healthz-bind-address", o.healthzBindAddress},
                                    std::pair{"--metrics-bind-address", o.metricsBindAddress},
                                    std::pair{"--lease-bind-address", o.leaseBindAddress}}) {
    std::string host;
    uint16_t port = 0;
    if (!value.empty()) {
      if (Status st = parseHostPort(value, &host, &port); !st) report(flag, st.message());
    }
  }
  for (const std::string& a : o.nodePortAddresses) {
    if (a == "primary") {
      if (o.nodePortAddresses.size() > 1) report("--nodeport-addresses", "\"primary\" cannot be combined with CIDRs");
    } else if (!IPPrefix::parse(a)) {
      report("--nodeport-addresses", fmt::format("\"{}\" is neither a CIDR nor \"primary\"", a));
    }
  }
  std::set<IPFamily> seen;
  for (const IPPrefix& p : o.serviceClusterIPRanges) {
    if (!seen.insert(p.family()).second)
      report("--service-cluster-ip-range", fmt::format("two ranges of family {}", familyName(p.family())));
  }
  return problems;
}

Result<std::chrono::nanoseconds> parseDuration(std::string_view text) {
  const std::string orig(text);
  auto bad = [&] { return invalid(fmt::format("\"{}\" is not a duration (e.g. 300ms, 30s, 1m30s)", orig)); };
  bool negative = false;
  if (!text.empty() && (text.front() == '-' || text.front() == '+')) {
    negative = text.front() == '-';
    text.remove_prefix(1);
  }
  if (text == "0") return std::chrono::nanoseconds(0);
  if (text.empty()) return bad();
  static const std::vector<std::pair<std::string_view, double>> kUnits = {
      {"ns", 1}, {"us", 1e3}, {"\xC2\xB5s", 1e3}, {"\xCE\xBCs", 1e3}, {"ms", 1e6}, {"s", 1e9}, {"m", 60e9}, {"h", 3600e9}};
  long double total = 0;
  while (!text.empty()) {
    size_t i = 0;
    while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
    if (i == 0) return bad();
    const std::string number(text.substr(0, i));
    if (std::count(number.begin(), number.end(), '.') > 1 || number == ".") return bad();
    text.remove_prefix(i);
    size_t j = 0;
    while (j < text.size() && !std::isdigit(static_cast<unsigned char>(text[j])) && text[j] != '.') ++j;
    const std::string_view unit = text.substr(0, j);
    text.remove_prefix(j);
    auto u = std::find_if(kUnits.begin(), kUnits.end(), [&](const auto& p) { return p.first == unit; });
    if (u == kUnits.end()) return bad();
    total += std::stold(number) * u->second;
  }
  if (total > static_cast<long double>(INT64_MAX)) return bad();
  auto ns = std::chrono::nanoseconds(static_cast<int64_t>(std::llround(static_cast<double>(total))));
  return negative ? -ns : ns;
}

std::string formatDuration(std::chrono::nanoseconds d) {
  using namespace std::chrono;
  if (d == nanoseconds::zero()) return "0s";
  std::string out = d < nanoseconds::zero() ? "-" : "";
  if (d < nanoseconds::zero()) d = -d;
  if (d < seconds(1)) {
    if (d % milliseconds(1) == nanoseconds::zero()) return out + fmt::format("{}ms", d / milliseconds(1));
    if (d % microseconds(1) == nanoseconds::zero()) return out + fmt::format("{}us", d / microseconds(1));
    return out + fmt::format("{}ns", d.count());
  }
  auto h = duration_cast<hours>(d);
  d -= h;
  auto m = duration_cast<minutes>(d);
  d -= m;
  if (h.count()) out += fmt::format("{}h", h.count());
  if (h.count() || m.count()) out += fmt::format("{}m", m.count());
  double s = duration<double>(d).count();
  out += fmt::format("{}s", s);
  return out;
}

std::string nodeName(const ProxyOptions& o) {
  std::string name = o.hostnameOverride;
  if (name.empty()) {
    char buf[256] = {};
    if (::gethostname(buf, sizeof(buf) - 1) == 0) name = buf;
  }
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  name.erase(0, name.find_first_not_of(" \t"));
  name.erase(name.find_last_not_of(" \t") + 1);
  return name;
}

std::string resolveSource(const ProxyOptions& o) {
  if (!o.source.empty()) return o.source;
  const bool inCluster = std::getenv("KUBERNETES_SERVICE_HOST") != nullptr &&
                         ::access("/var/run/secrets/kubernetes.io/serviceaccount/token", R_OK) == 0;
  if (!o.kubeconfig.empty() || !o.master.empty() || inCluster) return "kubernetes";
  return std::string("file:") + ProxyOptions::kDefaultSourceFile;
}

std::vector<IPFamily> ipFamilies(const ProxyOptions& o) {
  const auto& from = !o.serviceClusterIPRanges.empty() ? o.serviceClusterIPRanges : o.clusterCIDRs;
  std::set<IPFamily> fams;
  for (const IPPrefix& p : from) fams.insert(p.family());
  if (fams.empty()) fams = {IPFamily::kV4, IPFamily::kV6};
  return {fams.begin(), fams.end()};
}

ProxyConfig toProxyConfig(const ProxyOptions& o, IPFamily family) {
  ProxyConfig cfg;
  cfg.nodeName = nodeName(o);
  cfg.family = family;
  for (const IPPrefix& p : o.clusterCIDRs)
    if (p.family() == family) cfg.clusterCIDRs.push_back(p);
  cfg.masqueradeAll = o.masqueradeAll;
  cfg.masqueradeBit = o.masqueradeBit;
  return cfg;
}

std::string resolveLeaseBackend(const ProxyOptions& options) {
  if (!options.leaseBackend.empty()) return options.leaseBackend;
  return options.leaseEtcdEndpoints.empty() ? "" : "etcd";
}

}  // namespace sluice
