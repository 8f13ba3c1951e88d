// sluice/proxy_options.h — the node proxy's configuration: model, flags, config file, checks.
//
// One table (proxyFlags()) names every setting once: its command-line flag (kube-proxy's name
// where the meaning is the same), its field in the config file (a KubeProxyConfiguration
// subset, sluice's own settings under `sluice:`), its help text and its parser. Programs build
// their command line from the table; tests drive applyFlag()/applyConfigYaml() directly.
//
// Precedence, as kube-proxy: defaults < config file (--config) < flags given on the command
// line. Every error names the flag or the config field and says what is wrong; nothing here
// throws.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "sluice/ip.h"
#include "sluice/model.h"
#include "sluice/planner.h"
#include "sluice/status.h"

namespace sluice {

struct ProxyOptions {
  // --- where desired state comes from ---
  std::string configFile;
  std::string kubeconfig;
  std::string master;
  // "" = automatic: "kubernetes" when a kubeconfig, --master or in-cluster config exists,
  // else "file:" + kDefaultSourceFile. Otherwise "kubernetes" or "file:PATH".
  std::string source;
  // --- node and cluster ---
  std::string hostnameOverride;
  std::vector<IPPrefix> clusterCIDRs;
  std::vector<IPPrefix> serviceClusterIPRanges;
  // CIDRs selecting the node IPs NodePorts answer on, or the single word "primary".
  std::vector<std::string> nodePortAddresses;
  bool masqueradeAll = false;
  uint32_t masqueradeBit = 14;
  // --- sync ---
  std::chrono::nanoseconds minSyncPeriod = std::chrono::seconds(1);
  std::chrono::nanoseconds syncPeriod = std::chrono::seconds(30);
  std::chrono::nanoseconds drainTimeout = std::chrono::seconds(30);
  // --- endpoint leases (the lease reconciler) ---
  // "" = off (or "etcd" when leaseEtcdEndpoints is set), "embedded", "etcd", "kubernetes".
  std::string leaseBackend;
  ObjectName leaseService;  // the Service whose endpoints the leases are (required when on)
  std::chrono::nanoseconds leaseInterval = std::chrono::seconds(10);  // reconcile period
  std::string leaseBindAddress = "127.0.0.1:10259";  // embedded: the lease API's address
  std::string leaseTokenFile;  // embedded: bearer token the lease API requires (required)
  std::vector<std::string> leaseEtcdEndpoints;
  std::string leaseEtcdCAFile;    // https: PEM CA bundle that signed etcd's certificate
  std::string leaseEtcdCertFile;  // https: client certificate (etcd --client-cert-auth)
  std::string leaseEtcdKeyFile;   // https: its key
  std::string leasePrefix = "/sluice/leases/";
  std::chrono::nanoseconds leaseTTL = std::chrono::seconds(15);
  // --- serving ---
  std::string healthzBindAddress = "0.0.0.0:10256";   // "" disables; LBs probe it, so all addresses
  std::string metricsBindAddress = "127.0.0.1:10249";  // "" disables; admin: localhost only
  std::string adminTokenFile;  // when set, /metrics and /status need "Authorization: Bearer <token>"
  // --- process ---
  bool cleanup = false;
  std::string netns;  // run the data plane and every server inside this network namespace
  std::string logFormat = "text";  // text | json
  std::string logLevel = "info";   // trace | debug | info | warn | error

  static constexpr const char* kDefaultSourceFile = "/etc/sluice/services.yaml";
};

// One setting: flag, config field, help, parser.
struct FlagSpec {
  std::string flag;         // "--sync-period"
  std::string valueName;    // "DURATION"; "" for a boolean flag
  std::string configField;  // "nftables.syncPeriod"; "" = flag only
  std::string help;
  std::string defaultText;  // shown in --help
  std::function<Status(ProxyOptions&, const std::string&)> apply;
};
const std::vector<FlagSpec>& proxyFlags();

// Sets one flag ("--sync-period", value "10s"). Errors name the flag.
Status applyFlag(ProxyOptions& options, const std::string& flag, const std::string& value);

// Applies a config file's YAML text. Errors name `origin` (the file) and the field path.
// kube-proxy settings sluice does not use are ignored with a warning (so an existing
// KubeProxyConfiguration can be reused); unknown keys under `sluice:` are errors.
Status applyConfigYaml(ProxyOptions& options, const std::string& yamlText, const std::string& origin,
                       std::vector<std::string>* warnings = nullptr);
Status loadConfigFile(ProxyOptions& options, const std::string& path, std::vector<std::string>* warnings = nullptr);

// Defaults, then the config file named by --config among `given`, then every flag in `given`
// (command-line order), then validate(). On failure the Status lists every error, one per
// line, each naming its flag or field. Used at start and again on SIGHUP (reload).
Result<ProxyOptions> resolveOptions(const std::vector<std::pair<std::string, std::string>>& given,
                                    std::vector<std::string>* warnings = nullptr);

// Checks that belong to the combination (ranges, sync periods, addresses). Each Problem names
// the flag and the config field ("--sync-period / nftables.syncPeriod").
std::vector<Problem> validate(const ProxyOptions& options);

// Go's duration syntax as kube-proxy reads it: "300ms", "1.5h", "2h45m", "0".
Result<std::chrono::nanoseconds> parseDuration(std::string_view text);
std::string formatDuration(std::chrono::nanoseconds d);  // "1m30s", "500ms"

// The node name: --hostname-override, else the host name, lower-cased (as kube-proxy).
std::string nodeName(const ProxyOptions& options);
// The source to start, "kubernetes" or "file:PATH" (resolves the automatic choice).
std::string resolveSource(const ProxyOptions& options);
// The lease backend in effect: leaseBackend, else "etcd" when etcd endpoints are given, else "".
std::string resolveLeaseBackend(const ProxyOptions& options);
// Families to program: those of --service-cluster-ip-range, else of --cluster-cidr, else both.
std::vector<IPFamily> ipFamilies(const ProxyOptions& options);
// The planner's configuration for one family.
ProxyConfig toProxyConfig(const ProxyOptions& options, IPFamily family);

}  // namespace sluice
