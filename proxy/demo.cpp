// sluice-demo: sluiced end to end, inside throw-away network namespaces.
//
// Builds a node with three backend pods and a client pod, writes a manifest (a Service and its
// EndpointSlice, as `kubectl apply -f` takes them), and starts the real sluiced daemon on that
// file source inside the node's namespace. Then: real TCP through the Service IP and which
// backends answered; a held connection to one backend; the manifest edited so that backend is
// terminating — new connections avoid it while /status shows it draining with its live flow;
// then removed; finally sluiced is stopped (its rules stay, as on a real node) and everything
// is removed with the namespaces. Bounded: a few seconds.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "../tests/unit/http_client.h"
#include "testbed.h"

extern char** environ;

namespace {

using namespace sluice;
using namespace std::chrono_literals;
using testbed::Topology;

constexpr int kBackends = 3;
constexpr int kConnections = 60;
constexpr uint16_t kAdminPort = 10249;

void printSpread(const std::string& title, const std::map<std::string, int>& counts) {
  fmt::print("  {}\n", title);
  for (const auto& [who, n] : counts) fmt::print("    {:<12} {:>3}  {}\n", who, n, std::string(size_t(n), '#'));
}

// The manifest: Service demo/web on 198.19.0.10:80 → 8080 on every backend; backend `terminating`
// (1-based, 0 = none) is marked terminating, backend `removed` (0 = none) is left out.
std::string manifest(int terminating, int removed) {
  std::string out = fmt::format(
      "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: demo}}\n"
      "spec:\n  clusterIP: {0}\n  clusterIPs: [{0}]\n  ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080}}]\n"
      "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
      "metadata: {{name: web-abc12, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}\n"
      "addressType: IPv4\nports: [{{name: http, protocol: TCP, port: 8080}}]\nendpoints:\n",
      Topology::serviceIP(10, IPFamily::kV4).toString());
  for (int i = 1; i <= kBackends; ++i) {
    if (i == removed) continue;
    const bool t = i == terminating;
    out += fmt::format("- addresses: [{}]\n  nodeName: demo-node\n  conditions: {{ready: {}, serving: true, terminating: {}}}\n",
                       Topology::backendIP(i, IPFamily::kV4).toString(), t ? "false" : "true", t ? "true" : "false");
  }
  return out;
}

// Replaces the file in one step, as editors and ConfigMap updates do.
void writeManifest(const std::string& path, const std::string& text) {
  std::ofstream(path + ".tmp") << text;
  std::filesystem::rename(path + ".tmp", path);
}

class Daemon {
 public:
  explicit Daemon(const std::vector<std::string>& args) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ) != 0) pid_ = -1;
  }
  ~Daemon() { stop(SIGKILL); }
  bool running() const { return pid_ > 0; }
  int stop(int sig) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, sig);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  pid_t pid_ = -1;
};

// GET /status in the node namespace, polled until `until` holds (at most `timeout`).
template <class Pred>
std::optional<nlohmann::json> statusWhen(const testbed::Netns& ns, Pred until, std::chrono::milliseconds timeout = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (auto r = testing::httpGet(kAdminPort, "/status", "", "127.0.0.1", ns.path()); r && r->status == 200) {
      auto j = nlohmann::json::parse(r->body, nullptr, false);
      if (!j.is_discarded() && until(j)) return j;
    }
    std::this_thread::sleep_for(50ms);
  }
  return std::nullopt;
}

std::string sluicedPath() {
  // Next to this program in the build tree (build/proxy/), or on PATH when installed.
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe");
  std::filesystem::path sibling = self.parent_path() / "sluiced";
  return std::filesystem::exists(sibling) ? sibling.string() : "/usr/sbin/sluiced";
}

int run() {
  auto topo = Topology::create({kBackends, false, false});
  if (!topo) {
    fmt::print(stderr, "sluice-demo: cannot build the namespace topology: {}\n", topo.status().toString());
    return 1;
  }
  Topology& t = **topo;
  std::vector<std::unique_ptr<testbed::Server>> servers;
  for (int i = 1; i <= kBackends; ++i) {
    auto s = testbed::Server::start(t.backend(i), Protocol::kTCP, IPFamily::kV4, 8080, fmt::format("backend-{}", i));
    if (!s) {
      fmt::print(stderr, "sluice-demo: {}\n", s.status().toString());
      return 1;
    }
    servers.push_back(std::move(s).value());
  }
  char dirTemplate[] = "/tmp/sluice-demo-XXXXXX";
  if (!::mkdtemp(dirTemplate)) {
    fmt::print(stderr, "sluice-demo: mkdtemp: {}\n", std::strerror(errno));
    return 1;
  }
  const std::string dir = dirTemplate;
  const std::string path = dir + "/services.yaml";
  writeManifest(path, manifest(0, 0));
  const IPAddress webIP = Topology::serviceIP(10, IPFamily::kV4);

  const std::vector<std::string> args = {
      sluicedPath(), "--netns", t.node().path(), "--source", "file:" + path, "--hostname-override", "demo-node",
      "--cluster-cidr", Topology::podCIDR(IPFamily::kV4).toString(), "--healthz-bind-address", "127.0.0.1:10256",
      "--metrics-bind-address", fmt::format("127.0.0.1:{}", kAdminPort), "--min-sync-period", "0s",
      "--drain-timeout", "20s", "--log-level", "warn"};
  fmt::print("sluice demo: node namespace {}, pods {}, manifest {}\n", t.node().name(),
             Topology::podCIDR(IPFamily::kV4).toString(), path);
  fmt::print("$ {}\n\n", fmt::join(args, " "));
  int code = 1;
  {
    Daemon daemon(args);
    auto firstSync = [](const nlohmann::json& j) {
      return !j["families"].empty() && j["families"][0]["lastOk"] == true && j["families"][0]["services"] == 1;
    };
    auto up = daemon.running() ? statusWhen(t.node(), firstSync) : std::nullopt;
    if (!up) {
      fmt::print(stderr, "sluice-demo: sluiced did not program the manifest within 10 s\n");
    } else {
      fmt::print("sluiced is up: source {}, {} Service, {} endpoints programmed\n", (*up)["source"].get<std::string>(),
                 (*up)["families"][0]["services"].get<int>(), (*up)["families"][0]["endpoints"].get<int>());
      printSpread(fmt::format("client pod -> demo/web {}:80/TCP, {} new connections:", webIP.toString(), kConnections),
                  testbed::spread(t.client(), Protocol::kTCP, webIP, 80, kConnections));

      // A long-lived connection; then its backend is marked terminating in the manifest.
      auto held = testbed::Connection::open(t.client(), Protocol::kTCP, webIP, 80);
      if (held) {
        const std::string who = held->first().backendId;
        const int victim = std::stoi(who.substr(who.find('-') + 1));
        fmt::print("\nheld connection answered by {}; marking {} terminating in the manifest\n", who, who);
        writeManifest(path, manifest(victim, 0));
        // The tracker counts live flows once per poll interval (1 s): wait for the count.
        auto draining = statusWhen(
            t.node(), [](const nlohmann::json& j) { return !j["draining"].empty() && j["draining"][0]["liveFlows"] > 0; },
            3s);
        if (!draining) draining = statusWhen(t.node(), [](const nlohmann::json& j) { return !j["draining"].empty(); });
        if (draining) {
          for (const auto& d : (*draining)["draining"])
            fmt::print("  /status: draining {} of {}, live flows {}, deadline {}\n", d["endpoint"].get<std::string>(),
                       d["service"]["name"].get<std::string>(), d["liveFlows"].get<int>(),
                       d["deadline"].get<std::string>());
        }
        printSpread(fmt::format("new connections to {}:80 while {} drains:", webIP.toString(), who),
                    testbed::spread(t.client(), Protocol::kTCP, webIP, 80, kConnections));
        auto again = held->ask();
        fmt::print("  the held connection still reaches: {}\n", again.toString());
        held->close();

        fmt::print("\n{} removed from the manifest\n", who);
        writeManifest(path, manifest(0, victim));
        auto gone = statusWhen(t.node(), [](const nlohmann::json& j) {
          return j["draining"].empty() && j["families"][0]["endpoints"] == kBackends - 1;
        });
        if (gone)
          fmt::print("  /status: {} endpoints programmed, none draining (the held flow ended)\n",
                     (*gone)["families"][0]["endpoints"].get<int>());
        printSpread(fmt::format("new connections to {}:80:", webIP.toString()),
                    testbed::spread(t.client(), Protocol::kTCP, webIP, 80, kConnections));
      }
      auto metrics = testing::httpGet(kAdminPort, "/metrics", "", "127.0.0.1", t.node().path());
      if (metrics) {
        fmt::print("\n/metrics (excerpt):\n");
        std::istringstream lines(metrics->body);
        for (std::string line; std::getline(lines, line);)
          if (line.rfind("kubeproxy_sync_proxy_rules_duration_seconds_count", 0) == 0 ||
              line.rfind("sluice_draining", 0) == 0 || line.rfind("sluice_drains_completed_total", 0) == 0 ||
              line.rfind("kubeproxy_network_programming_duration_seconds_count", 0) == 0)
            fmt::print("  {}\n", line);
      }
      code = 0;
    }
    const int exitCode = daemon.stop(SIGTERM);
    fmt::print("\nsluiced stopped with SIGTERM (exit {}); its rules stay until the namespace goes\n", exitCode);
  }
  servers.clear();  // sockets hold their namespaces; close them before the topology goes
  std::filesystem::remove_all(dir);
  fmt::print("namespaces and {} removed; nothing was changed outside them.\n", dir);
  return code;
}

}  // namespace

int main() { return run(); }
