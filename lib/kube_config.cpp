#include "sluice/kube_config.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <yaml-cpp/yaml.h>

#include "read_file.h"

extern char** environ;

namespace sluice::kube {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

Result<std::string> base64Decode(std::string in, const std::string& what) {
  std::erase_if(in, [](char c) { return std::isspace(static_cast<unsigned char>(c)); });
  if (in.size() % 4 != 0) return Status(Code::kInvalidArgument, what + ": not base64");
  std::string out(in.size(), '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  if (n < 0) return Status(Code::kInvalidArgument, what + ": not base64");
  size_t pad = in.empty() ? 0 : (in.back() == '=') + (in.size() > 1 && in[in.size() - 2] == '=');
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

std::string trimmed(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

// RFC 3339 "2026-11-25T22:00:00Z" (fractional seconds and offsets accepted).
std::optional<std::chrono::system_clock::time_point> parseTime(const std::string& s) {
  std::tm tm{};
  const char* end = strptime(s.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  if (!end) return std::nullopt;
  if (*end == '.')
    while (std::isdigit(static_cast<unsigned char>(*++end))) {
    }
  long offset = 0;
  if (*end == '+' || *end == '-') {
    int hh = 0, mm = 0;
    if (std::sscanf(end + 1, "%d:%d", &hh, &mm) != 2) return std::nullopt;
    offset = (*end == '-' ? -1 : 1) * (hh * 3600L + mm * 60L);
  } else if (*end != 'Z' && *end != 'z') {
    return std::nullopt;
  }
  time_t t = timegm(&tm) - offset;
  // system_clock counts nanoseconds in 64 bits: it ends in 2262. Later is "never expires".
  if (t > 9'000'000'000) return std::chrono::system_clock::time_point::max();
  return std::chrono::system_clock::from_time_t(t);
}

YAML::Node findNamed(const YAML::Node& list, const std::string& name, const char* field) {
  if (list && list.IsSequence())
    for (const auto& item : list)
      if (item["name"] && item["name"].as<std::string>() == name) return item[field];
  return YAML::Node(YAML::NodeType::Undefined);
}

std::string str(const YAML::Node& n, const char* key) {
  return n && n[key] && n[key].IsScalar() ? n[key].as<std::string>() : std::string();
}

}  // namespace

Result<ClientConfig> loadKubeconfig(const std::string& path, const std::string& context) {
  auto text = readFile(path);
  if (!text) return text.status();
  auto bad = [&](const std::string& why) {
    return Status(Code::kInvalidArgument, fmt::format("kubeconfig {}: {}", path, why));
  };
  try {
    YAML::Node root = YAML::Load(*text);
    std::string ctxName = context.empty() ? str(root, "current-context") : context;
    if (ctxName.empty()) return bad("no current-context and no context given");
    YAML::Node ctx = findNamed(root["contexts"], ctxName, "context");
    if (!ctx) return bad("context \"" + ctxName + "\" not found");
    YAML::Node cluster = findNamed(root["clusters"], str(ctx, "cluster"), "cluster");
    if (!cluster) return bad("cluster \"" + str(ctx, "cluster") + "\" not found");
    YAML::Node user = findNamed(root["users"], str(ctx, "user"), "user");
    if (!user && !str(ctx, "user").empty()) return bad("user \"" + str(ctx, "user") + "\" not found");
    fs::path dir = fs::path(path).parent_path();
    auto resolve = [&](const std::string& p) {
      return p.empty() || fs::path(p).is_absolute() ? p : (dir / p).lexically_normal().string();
    };

    ClientConfig cfg;
    std::string server = str(cluster, "server");
    if (server.empty()) return bad("cluster has no server");
    cfg.servers.push_back(server);
    cfg.tls.caFile = resolve(str(cluster, "certificate-authority"));
    if (auto d = str(cluster, "certificate-authority-data"); !d.empty()) {
      auto pem = base64Decode(d, "certificate-authority-data");
      if (!pem) return bad(pem.status().message());
      cfg.tls.caData = *pem;
    }
    cfg.tls.insecureSkipVerify = cluster["insecure-skip-tls-verify"] &&
                                 cluster["insecure-skip-tls-verify"].as<bool>();
    cfg.tls.serverName = str(cluster, "tls-server-name");
    if (!str(cluster, "proxy-url").empty()) return bad("proxy-url is not supported");
    if (user) {
      cfg.token = str(user, "token");
      cfg.tokenFile = resolve(str(user, "tokenFile"));
      cfg.tls.certFile = resolve(str(user, "client-certificate"));
      cfg.tls.keyFile = resolve(str(user, "client-key"));
      for (auto [field, target] : {std::pair{"client-certificate-data", &cfg.tls.certData},
                                   std::pair{"client-key-data", &cfg.tls.keyData}}) {
        if (auto d = str(user, field); !d.empty()) {
          auto pem = base64Decode(d, field);
          if (!pem) return bad(pem.status().message());
          *target = *pem;
        }
      }
      if (user["auth-provider"]) return bad("auth-provider plugins are not supported; use exec");
      if (!str(user, "username").empty()) return bad("basic auth (username/password) is not supported");
      if (YAML::Node e = user["exec"]; e) {
        ExecConfig exec;
        exec.apiVersion = str(e, "apiVersion").empty() ? exec.apiVersion : str(e, "apiVersion");
        exec.command = str(e, "command");
        if (exec.command.empty()) return bad("exec without command");
        // A bare name is looked up in PATH; a relative path is relative to the kubeconfig.
        if (exec.command.find('/') != std::string::npos) exec.command = resolve(exec.command);
        if (e["args"])
          for (const auto& a : e["args"]) exec.args.push_back(a.as<std::string>());
        if (e["env"])
          for (const auto& v : e["env"]) exec.env.emplace_back(str(v, "name"), str(v, "value"));
        exec.provideClusterInfo = e["provideClusterInfo"] && e["provideClusterInfo"].as<bool>();
        cfg.exec = exec;
      }
    }
    return cfg;
  } catch (const YAML::Exception& e) {
    return bad(e.what());
  }
}

Result<ClientConfig> inClusterConfig(const std::string& serviceAccountDir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (!host || !port || !*host || !*port)
    return Status(Code::kFailedPrecondition,
                  "not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set");
  std::string h = host;
  if (h.find(':') != std::string::npos) h = "[" + h + "]";
  ClientConfig cfg;
  cfg.servers.push_back("https://" + h + ":" + port);
  cfg.tokenFile = serviceAccountDir + "/token";
  cfg.tls.caFile = serviceAccountDir + "/ca.crt";
  if (auto t = readFile(cfg.tokenFile); !t) return t.status().withContext("service account token");
  return cfg;
}

Result<ExecCredential> runExecPlugin(const ExecConfig& exec, const std::string& server) {
  auto fail = [&](const std::string& why) {
    return Status(Code::kUnavailable, fmt::format("exec plugin {}: {}", exec.command, why));
  };
  json info = {{"apiVersion", exec.apiVersion},
               {"kind", "ExecCredential"},
               {"spec", {{"interactive", false}}}};
  if (exec.provideClusterInfo) info["spec"]["cluster"] = {{"server", server}};

  std::vector<std::string> envStrings;
  for (char** e = environ; *e; ++e) envStrings.emplace_back(*e);
  for (const auto& [k, v] : exec.env) envStrings.push_back(k + "=" + v);
  envStrings.push_back("KUBERNETES_EXEC_INFO=" + info.dump());
  std::vector<char*> envp, argv;
  for (auto& s : envStrings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string cmd = exec.command;
  std::vector<std::string> args = exec.args;
  argv.push_back(cmd.data());
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return fail("pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, cmd.c_str(), &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(out[1]);
  if (rc != 0) {
    ::close(out[0]);
    return fail(std::string("cannot start: ") + std::strerror(rc));
  }
  std::string output;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(out[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    output.append(buf, static_cast<size_t>(n));
  }
  ::close(out[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return fail(fmt::format("exited with status {}", WIFEXITED(status) ? WEXITSTATUS(status) : -1));
  json doc = json::parse(output, nullptr, false);
  if (!doc.is_object() || doc.value("kind", "") != "ExecCredential" || !doc.contains("status"))
    return fail("output is not an ExecCredential");
  const json& st = doc["status"];
  ExecCredential cred;
  cred.token = st.value("token", "");
  cred.clientCertificateData = st.value("clientCertificateData", "");
  cred.clientKeyData = st.value("clientKeyData", "");
  if (cred.token.empty() && (cred.clientCertificateData.empty() || cred.clientKeyData.empty()))
    return fail("status has neither token nor client certificate and key");
  if (auto t = st.value("expirationTimestamp", ""); !t.empty()) {
    cred.expiration = parseTime(t);
    if (!cred.expiration) return fail("bad expirationTimestamp \"" + t + "\"");
  }
  return cred;
}

Credentials::Credentials(ClientConfig config) : config_(std::move(config)) {}

Status Credentials::refreshLocked() {
  auto now = std::chrono::system_clock::now();
  if (config_.exec) {
    if (valid_ && (expiry_ == std::chrono::system_clock::time_point{} || now < expiry_)) return {};
    ++execRuns_;
    auto cred = runExecPlugin(*config_.exec, config_.servers.empty() ? "" : config_.servers[0]);
    if (!cred) return cred.status();
    token_ = cred->token;
    execCert_ = cred->clientCertificateData;
    execKey_ = cred->clientKeyData;
    expiry_ = cred->expiration.value_or(std::chrono::system_clock::time_point{});
    valid_ = true;
    return {};
  }
  if (!config_.tokenFile.empty()) {
    auto steadyNow = std::chrono::steady_clock::now();
    if (valid_ && steadyNow - tokenReadAt_ < config_.tokenFileReload) return {};
    auto text = readFile(config_.tokenFile);
    if (!text) {
      // Keep using the last token when a rotation briefly removes the file.
      if (valid_) return {};
      return Status(Code::kUnavailable, text.status().message());
    }
    token_ = trimmed(*text);
    tokenReadAt_ = steadyNow;
    valid_ = true;
    return {};
  }
  token_ = config_.token;
  valid_ = true;
  return {};
}

Result<std::string> Credentials::authorization() {
  std::lock_guard lock(mu_);
  if (Status s = refreshLocked(); !s) return s;
  return token_.empty() ? std::string() : "Bearer " + token_;
}

http::TlsConfig Credentials::tls() {
  std::lock_guard lock(mu_);
  http::TlsConfig t = config_.tls;
  if (config_.exec) (void)refreshLocked();
  if (!execCert_.empty() && !execKey_.empty()) {
    t.certData = execCert_;
    t.keyData = execKey_;
    t.certFile.clear();
    t.keyFile.clear();
  }
  return t;
}

void Credentials::invalidate() {
  std::lock_guard lock(mu_);
  valid_ = false;
}

uint64_t Credentials::execRuns() const {
  std::lock_guard lock(mu_);
  return execRuns_;
}

}  // namespace sluice::kube
