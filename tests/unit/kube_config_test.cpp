// kubeconfig, in-cluster config and exec credential plugins (a real shell-script plugin).
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "apiserver.h"
#include "sluice/http_client.h"
#include "sluice/kube_config.h"

namespace {

namespace fs = std::filesystem;
namespace kube = sluice::kube;
using nlohmann::json;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "sluice-kubecfg-XXXXXX").string();
    path = mkdtemp(tmpl.data());
  }
  ~TempDir() { fs::remove_all(path); }
  std::string write(const std::string& name, const std::string& text, bool exec = false) {
    fs::path p = path / name;
    std::ofstream(p) << text;
    if (exec) chmod(p.c_str(), 0755);
    return p.string();
  }
};

}  // namespace

TEST_CASE("kubeconfig: current context, base64 data, relative paths, named context") {
  TempDir dir;
  // "Q0EgUEVN" = base64("CA PEM"), "Q0VSVA==" = "CERT", "S0VZ" = "KEY".
  std::string path = dir.write("config", R"(
apiVersion: v1
kind: Config
current-context: prod
clusters:
- name: c1
  cluster:
    server: https://198.18.0.1:6443
    certificate-authority-data: Q0EgUEVN
    tls-server-name: kubernetes.default
- name: c2
  cluster:
    server: https://[fd00::1]:6443
    certificate-authority: ca.crt
    insecure-skip-tls-verify: true
users:
- name: u1
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
- name: u2
  user:
    tokenFile: token
contexts:
- name: prod
  context: {cluster: c1, user: u1}
- name: lab
  context: {cluster: c2, user: u2, namespace: x}
)");
  auto cfg = kube::loadKubeconfig(path);
  REQUIRE(cfg);
  CHECK(cfg->servers == std::vector<std::string>{"https://198.18.0.1:6443"});
  CHECK(cfg->tls.caData == "CA PEM");
  CHECK(cfg->tls.serverName == "kubernetes.default");
  CHECK(cfg->tls.certData == "CERT");
  CHECK(cfg->tls.keyData == "KEY");
  CHECK_FALSE(cfg->tls.insecureSkipVerify);

  auto lab = kube::loadKubeconfig(path, "lab");
  REQUIRE(lab);
  CHECK(lab->servers[0] == "https://[fd00::1]:6443");
  CHECK(lab->tls.caFile == (dir.path / "ca.crt").string());
  CHECK(lab->tls.insecureSkipVerify);
  CHECK(lab->tokenFile == (dir.path / "token").string());

  auto missing = kube::loadKubeconfig(path, "nope");
  CHECK(missing.status().code() == sluice::Code::kInvalidArgument);
  CHECK(kube::loadKubeconfig((dir.path / "absent").string()).status().code() == sluice::Code::kNotFound);
  std::string ap = dir.write("ap", R"(
current-context: a
clusters: [{name: c, cluster: {server: "https://x"}}]
users: [{name: u, user: {auth-provider: {name: gcp}}}]
contexts: [{name: a, context: {cluster: c, user: u}}]
)");
  auto unsupported = kube::loadKubeconfig(ap);
  CHECK_FALSE(unsupported);
  CHECK(unsupported.status().message().find("auth-provider") != std::string::npos);
}

TEST_CASE("kubeconfig: in-cluster service account") {
  TempDir dir;
  dir.write("token", "sa-token\n");
  dir.write("ca.crt", "pem");
  setenv("KUBERNETES_SERVICE_HOST", "fd00::10", 1);
  setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  auto cfg = kube::inClusterConfig(dir.path.string());
  unsetenv("KUBERNETES_SERVICE_HOST");
  unsetenv("KUBERNETES_SERVICE_PORT");
  REQUIRE(cfg);
  CHECK(cfg->servers[0] == "https://[fd00::10]:443");
  CHECK(sluice::http::parseUrl(cfg->servers[0]));
  kube::Credentials creds(*cfg);
  CHECK(*creds.authorization() == "Bearer sa-token");
  CHECK(kube::inClusterConfig(dir.path.string()).status().code() == sluice::Code::kFailedPrecondition);
}

TEST_CASE("exec plugin: KUBERNETES_EXEC_INFO in, ExecCredential out, cached until expiry") {
  TempDir dir;
  std::string seen = (dir.path / "seen").string();
  std::string count = (dir.path / "count").string();
  // Records what it was given, counts its runs, prints a token that expires at $EXPIRY.
  std::string plugin = dir.write("plugin.sh", R"(#!/bin/sh
printf '%s' "$KUBERNETES_EXEC_INFO" > )" + seen + R"(
echo run >> )" + count + R"(
cat <<EOF
{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",
 "status":{"token":"exec-$1-$MODE","expirationTimestamp":"$EXPIRY"}}
EOF
)", true);
  std::string kubeconfig = dir.write("config", R"(
current-context: a
clusters: [{name: c, cluster: {server: "http://127.0.0.1:1"}}]
users:
- name: u
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: ./plugin.sh
      args: ["arg"]
      env: [{name: MODE, value: m1}, {name: EXPIRY, value: "2000-01-01T00:00:00Z"}]
      provideClusterInfo: true
contexts: [{name: a, context: {cluster: c, user: u}}]
)");
  auto cfg = kube::loadKubeconfig(kubeconfig);
  REQUIRE(cfg);
  REQUIRE(cfg->exec);
  CHECK(cfg->exec->command == plugin);
  kube::Credentials creds(*cfg);
  auto auth = creds.authorization();
  REQUIRE(auth);
  CHECK(*auth == "Bearer exec-arg-m1");
  std::ifstream in(seen);
  json info = json::parse(in);
  CHECK(info["kind"] == "ExecCredential");
  CHECK(info["spec"]["interactive"] == false);
  CHECK(info["spec"]["cluster"]["server"] == "http://127.0.0.1:1");
  // Expired in 2000: every call runs the plugin again.
  (void)creds.authorization();
  CHECK(creds.execRuns() == 2);

  cfg->exec->env = {{"MODE", "m2"}, {"EXPIRY", "2999-01-01T00:00:00.5+01:00"}};
  kube::Credentials lasting(*cfg);
  CHECK(*lasting.authorization() == "Bearer exec-arg-m2");
  CHECK(*lasting.authorization() == "Bearer exec-arg-m2");
  CHECK(lasting.execRuns() == 1);
  lasting.invalidate();  // a 401
  (void)lasting.authorization();
  CHECK(lasting.execRuns() == 2);

  // Against the double: the plugin's token is what the server sees.
  sluice::testing::ApiServerOptions so;
  so.tokens = {"exec-arg-m2"};
  sluice::testing::ApiServer server(so);
  server.start();
  sluice::http::ConnectionOptions o;
  o.url = *sluice::http::parseUrl(server.url());
  sluice::http::Connection conn(o);
  auto res = conn.roundTrip({"GET", "/api/v1/services", {{"Authorization", *lasting.authorization()}}, ""},
                            std::chrono::milliseconds(2000));
  REQUIRE(res);
  CHECK(res->status == 200);

  std::string broken = dir.write("broken.sh", "#!/bin/sh\necho not json\n", true);
  kube::ExecConfig bad;
  bad.command = broken;
  auto r = kube::runExecPlugin(bad, "");
  CHECK_FALSE(r);
  CHECK(r.status().code() == sluice::Code::kUnavailable);
  bad.command = (dir.path / "missing").string();
  CHECK_FALSE(kube::runExecPlugin(bad, ""));
}
