// The apiserver double: one thread per connection with blocking Beast I/O (plenty for tests),
// one mutex over the store, a condition variable that wakes watches.
#include "apiserver.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <openssl/evp.h>

namespace sluice::testing {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace ssl = boost::asio::ssl;
using tcp = net::ip::tcp;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds limit) {
  auto end = Clock::now() + limit;
  while (Clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

struct ApiServer::Conn {
  net::io_context io;
  tcp::socket sock{io};
  std::thread thread;
};

namespace {

std::string percentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else if (s[i] == '+') {
      out.push_back(' ');
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::map<std::string, std::string> parseQuery(std::string_view q) {
  std::map<std::string, std::string> out;
  while (!q.empty()) {
    size_t amp = q.find('&');
    std::string_view part = q.substr(0, amp);
    size_t eq = part.find('=');
    out[percentDecode(part.substr(0, eq))] =
        eq == std::string_view::npos ? "" : percentDecode(part.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    q.remove_prefix(amp + 1);
  }
  return out;
}

std::string base64url(const std::string& in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  out.resize(static_cast<size_t>(n));
  while (!out.empty() && out.back() == '=') out.pop_back();
  for (char& c : out) c = c == '+' ? '-' : c == '/' ? '_' : c;
  return out;
}

std::optional<std::string> unbase64url(std::string in) {
  for (char& c : in) c = c == '-' ? '+' : c == '_' ? '/' : c;
  while (in.size() % 4) in.push_back('=');
  std::string out(in.size(), '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  if (n < 0) return std::nullopt;
  size_t pad = static_cast<size_t>(std::count(in.end() - std::min<size_t>(2, in.size()), in.end(), '='));
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

json statusBody(int code, const std::string& reason, const std::string& message, json details = nullptr) {
  json s = {{"kind", "Status"}, {"apiVersion", "v1"}, {"metadata", json::object()},
            {"status", "Failure"}, {"message", message}, {"reason", reason}, {"code", code}};
  if (!details.is_null()) s["details"] = std::move(details);
  return s;
}

// kube-proxy's selector vocabulary: !k, k, k=v, k==v, k!=v, k in (..), k notin (..); ',' = AND.
bool matchesSelector(const json& obj, const std::string& selector) {
  std::map<std::string, std::string> labels;
  if (auto it = obj["metadata"].find("labels"); it != obj["metadata"].end() && it->is_object())
    for (auto& [k, v] : it->items()) labels[k] = v.get<std::string>();
  std::vector<std::string> reqs;
  std::string cur;
  int depth = 0;
  for (char c : selector) {
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (c == ',' && depth == 0) {
      reqs.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) reqs.push_back(cur);
  auto trim = [](std::string s) {
    s.erase(0, s.find_first_not_of(' '));
    s.erase(s.find_last_not_of(' ') + 1);
    return s;
  };
  for (std::string r : reqs) {
    r = trim(r);
    if (r.empty()) continue;
    if (r[0] == '!') {
      if (labels.count(trim(r.substr(1)))) return false;
      continue;
    }
    for (const char* op : {" notin ", " in "}) {
      size_t at = r.find(op);
      if (at == std::string::npos) continue;
      std::string key = trim(r.substr(0, at));
      std::string list = r.substr(r.find('(') + 1);
      list = list.substr(0, list.find(')'));
      std::set<std::string> values;
      size_t p = 0;
      while (p <= list.size()) {
        size_t q = list.find(',', p);
        values.insert(trim(list.substr(p, q - p)));
        if (q == std::string::npos) break;
        p = q + 1;
      }
      auto it = labels.find(key);
      bool in = it != labels.end() && values.count(it->second);
      if (std::string(op) == " in " ? !in : (it != labels.end() && in)) return false;
      goto next;
    }
    if (size_t at = r.find("!="); at != std::string::npos) {
      auto it = labels.find(trim(r.substr(0, at)));
      if (it != labels.end() && it->second == trim(r.substr(at + 2))) return false;
    } else if (size_t eq = r.find('='); eq != std::string::npos) {
      size_t valueAt = r.compare(eq, 2, "==") == 0 ? eq + 2 : eq + 1;
      auto it = labels.find(trim(r.substr(0, eq)));
      if (it == labels.end() || it->second != trim(r.substr(valueAt))) return false;
    } else if (!labels.count(r)) {
      return false;
    }
  next:;
  }
  return true;
}

// The generic field selectors every kind supports (metadata.name, and metadata.namespace for
// namespaced kinds): "k=v", "k==v", "k!=v", ',' = AND. Returns the error message of an
// unsupported field, as kube-apiserver's 400 says it.
std::optional<std::string> checkFieldSelector(const std::string& selector, bool clusterScoped) {
  size_t start = 0;
  while (start < selector.size()) {
    size_t end = selector.find(',', start);
    if (end == std::string::npos) end = selector.size();
    std::string term = selector.substr(start, end - start);
    std::string field = term.substr(0, term.find_first_of("!="));
    if (field != "metadata.name" && (clusterScoped || field != "metadata.namespace"))
      return "field label not supported: " + field;
    start = end + 1;
  }
  return std::nullopt;
}

bool matchesFieldSelector(const json& obj, const std::string& selector) {
  size_t start = 0;
  while (start < selector.size()) {
    size_t end = selector.find(',', start);
    if (end == std::string::npos) end = selector.size();
    std::string term = selector.substr(start, end - start);
    start = end + 1;
    size_t op = term.find_first_of("!=");
    if (op == std::string::npos) continue;
    bool negated = term[op] == '!';
    size_t valueAt = op + (negated || term.compare(op, 2, "==") == 0 ? 2 : 1);
    std::string field = term.substr(0, op);
    std::string actual = obj["metadata"].value(field == "metadata.name" ? "name" : "namespace", "");
    if ((actual == term.substr(valueAt)) == negated) return false;
  }
  return true;
}

std::string keyOf(const json& obj) {
  return obj["metadata"].value("namespace", "") + "/" + obj["metadata"].value("name", "");
}

}  // namespace

ApiServer::ApiServer(ApiServerOptions options) : options_(std::move(options)) {
  addResource({"/api/v1", "services", "Service",
               {{"spec", json::object()}, {"status", {{"loadBalancer", json::object()}}}}});
  addResource({"/apis/discovery.k8s.io/v1", "endpointslices", "EndpointSlice",
               {{"addressType", ""}, {"endpoints", nullptr}, {"ports", nullptr}}});
  addResource({"/api/v1", "endpoints", "Endpoints", json::object()});
  addResource({"/apis/coordination.k8s.io/v1", "leases", "Lease", {{"spec", json::object()}}});
  addResource({"/api/v1", "nodes", "Node",
               {{"spec", json::object()},
                {"status", {{"daemonEndpoints", {{"kubeletEndpoint", {{"Port", 0}}}}},
                            {"nodeInfo", {{"machineID", ""}, {"systemUUID", ""}, {"bootID", ""},
                                          {"kernelVersion", ""}, {"osImage", ""},
                                          {"containerRuntimeVersion", ""}, {"kubeletVersion", ""},
                                          {"kubeProxyVersion", ""}, {"operatingSystem", ""},
                                          {"architecture", ""}}}}}},
               true});
  if (options_.tls) {
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
    ctx->use_certificate_chain(net::buffer(options_.certPem));
    ctx->use_private_key(net::buffer(options_.keyPem), ssl::context::pem);
    tlsContext_ = ctx;
  }
}

ApiServer::~ApiServer() { stop(); }

void ApiServer::addResource(ApiResource resource) { resources_.push_back(std::move(resource)); }

std::string ApiServer::url() const {
  return std::string(options_.tls ? "https" : "http") + "://127.0.0.1:" + std::to_string(port_);
}

void ApiServer::listen() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port_);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 64) != 0) {
    ::close(fd);
    throw std::runtime_error("apiserver double: cannot listen");
  }
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  listenFd_ = fd;
  acceptor_ = std::thread([this] { acceptLoop(); });
}

void ApiServer::start(uint16_t port) {
  port_ = port;
  listen();
}

void ApiServer::refuseConnections() {
  int fd = listenFd_.exchange(-1);
  if (fd < 0) return;
  ::shutdown(fd, SHUT_RDWR);  // wakes accept()
  if (acceptor_.joinable()) acceptor_.join();
  ::close(fd);
}

void ApiServer::acceptConnections() {
  if (listenFd_ < 0) listen();
}

void ApiServer::stop() {
  refuseConnections();
  std::map<uint64_t, std::shared_ptr<Conn>> conns;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    conns.swap(conns_);
  }
  changed_.notify_all();
  for (auto& [id, c] : conns) ::shutdown(c->sock.native_handle(), SHUT_RDWR);
  for (auto& [id, c] : conns)
    if (c->thread.joinable()) c->thread.join();
  std::lock_guard lock(mu_);
  stopping_ = false;
}

void ApiServer::acceptLoop() {
  for (;;) {
    int fd = listenFd_;
    if (fd < 0) return;
    int cfd = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (cfd < 0) {
      if (errno == EINTR) continue;
      return;
    }
    auto conn = std::make_shared<Conn>();
    conn->sock.assign(tcp::v4(), cfd);
    std::lock_guard lock(mu_);
    conns_[nextConn_++] = conn;
    conn->thread = std::thread([this, conn] { serve(conn); });
  }
}

void ApiServer::serve(std::shared_ptr<Conn> conn) {
  try {
    if (tlsContext_) {
      ssl::stream<tcp::socket&> stream(conn->sock, *std::static_pointer_cast<ssl::context>(tlsContext_));
      beast::error_code ec;
      stream.handshake(ssl::stream_base::server, ec);
      if (!ec) serveStream(stream, conn);
    } else {
      serveStream(conn->sock, conn);
    }
  } catch (const std::exception&) {
    // The peer went away mid-write: nothing to do, the thread ends.
  }
  beast::error_code ignored;
  conn->sock.shutdown(tcp::socket::shutdown_both, ignored);
}

template <class Stream>
void ApiServer::serveStream(Stream& stream, const std::shared_ptr<Conn>& conn) {
  beast::flat_buffer buf;
  for (;;) {
    bhttp::request<bhttp::string_body> req;
    beast::error_code ec;
    bhttp::read(stream, buf, req, ec);
    if (ec) return;
    std::string target(req.target());
    size_t qm = target.find('?');
    std::string path = target.substr(0, qm);
    auto query = parseQuery(qm == std::string::npos ? "" : std::string_view(target).substr(qm + 1));
    std::string auth(req[bhttp::field::authorization]);
    {
      std::lock_guard lock(mu_);
      requests_.push_back({std::string(req.method_string()), target, auth, query});
    }
    auto reply = [&](int code, const json& body) {
      bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(code), 11};
      res.set(bhttp::field::content_type, "application/json");
      res.set("Audit-Id", "00000000-0000-0000-0000-000000000000");
      res.set(bhttp::field::cache_control, "no-cache, private");
      res.body() = body.dump();
      res.keep_alive(req.keep_alive());
      res.prepare_payload();
      bhttp::write(stream, res);
    };
    auto fail = [&](int code, const std::string& reason, const std::string& message,
                    json details = nullptr) {
      reply(code, statusBody(code, reason, message, std::move(details)));
    };

    // Authentication.
    std::set<std::string> tokens, forbidden;
    {
      std::lock_guard lock(mu_);
      tokens = options_.tokens;
      forbidden = options_.forbiddenTokens;
    }
    if (!tokens.empty() || !forbidden.empty()) {
      std::string token = auth.rfind("Bearer ", 0) == 0 ? auth.substr(7) : "";
      if (forbidden.count(token)) {
        fail(403, "Forbidden", "services is forbidden: User \"system:serviceaccount:x\" cannot list resource");
        if (!req.keep_alive()) return;
        continue;
      }
      if (!tokens.count(token)) {
        fail(401, "Unauthorized", "Unauthorized");
        if (!req.keep_alive()) return;
        continue;
      }
    }

    // Routing: PREFIX/[namespaces/NS/]PLURAL[/NAME].
    const ApiResource* res = nullptr;
    std::string ns, name;
    for (const auto& r : resources_) {
      if (path.rfind(r.prefix + "/", 0) != 0) continue;
      std::string rest = path.substr(r.prefix.size() + 1);
      std::string rns;
      if (rest.rfind("namespaces/", 0) == 0) {
        if (r.clusterScoped) continue;
        size_t slash = rest.find('/', 11);
        if (slash == std::string::npos) continue;
        rns = rest.substr(11, slash - 11);
        rest = rest.substr(slash + 1);
      }
      if (rest == r.plural || rest.rfind(r.plural + "/", 0) == 0) {
        res = &r;
        ns = rns;
        name = rest.size() > r.plural.size() ? rest.substr(r.plural.size() + 1) : "";
        break;
      }
    }
    if (!res) {
      fail(404, "NotFound", "the server could not find the requested resource");
      if (!req.keep_alive()) return;
      continue;
    }
    if (options_.forbiddenResources.count(res->plural)) {
      fail(403, "Forbidden",
           res->plural + " is forbidden: User \"system:serviceaccount:kube-system:sluiced\" cannot " +
               "list resource \"" + res->plural + "\" in API group \"" +
               (res->prefix == "/api/v1" ? "" : res->prefix.substr(6, res->prefix.rfind('/') - 6)) +
               "\" at the cluster scope",
           {{"kind", res->plural}});
      if (!req.keep_alive()) return;
      continue;
    }
    auto withKind = [res](json obj) {
      json out = {{"kind", res->kind},
                  {"apiVersion", res->prefix == "/api/v1" ? "v1" : res->prefix.substr(6)}};
      out.update(obj);
      return out;
    };
    auto param = [&](const std::string& k) {
      auto it = query.find(k);
      return it == query.end() ? std::string() : it->second;
    };
    std::string selector = param("labelSelector");
    std::string fieldSelector = param("fieldSelector");
    if (auto bad = checkFieldSelector(fieldSelector, res->clusterScoped)) {
      fail(400, "BadRequest", *bad);
      if (!req.keep_alive()) return;
      continue;
    }
    auto visible = [&](const json& obj) {
      return (ns.empty() || obj["metadata"].value("namespace", "") == ns) &&
             matchesSelector(obj, selector) && matchesFieldSelector(obj, fieldSelector);
    };

    if (req.method() == bhttp::verb::get && name.empty() &&
        (param("watch") == "1" || param("watch") == "true")) {
      // ---- WATCH ----
      std::optional<int> rejectWith;
      {
        std::lock_guard lock(mu_);
        auto it = rejectedWatches_.find(res->plural);
        if (it != rejectedWatches_.end() && it->second.second > 0) {
          --it->second.second;
          rejectWith = it->second.first;
        }
      }
      if (rejectWith) {
        fail(*rejectWith, *rejectWith == 410 ? "Expired" : *rejectWith == 429 ? "TooManyRequests" : "Forbidden",
             "watch of " + res->plural + " refused by the test server");
        return;
      }
      if (param("sendInitialEvents") == "true") {
        fail(400, "BadRequest", "sendInitialEvents is not supported by this test server");
        return;
      }
      std::string rvParam = param("resourceVersion");
      auto timeout = std::chrono::seconds(param("timeoutSeconds").empty()
                                              ? 1800 : std::stoll(param("timeoutSeconds")));
      bool bookmarks = param("allowWatchBookmarks") == "true";
      auto deadline = Clock::now() + timeout;
      std::vector<json> initial;
      uint64_t cursor = 0;
      uint64_t cutGen = 0;
      std::optional<json> expired;
      {
        std::lock_guard lock(mu_);
        cutGen = cutGeneration_;
        if (rvParam.empty() || rvParam == "0") {
          for (auto& [k, obj] : store_[res->plural])
            if (visible(obj)) initial.push_back({{"type", "ADDED"}, {"object", withKind(obj)}});
          cursor = rv_;
        } else {
          cursor = std::stoull(rvParam);
          if (cursor < compactedRv_) {
            std::string msg = options_.etcdExpiredWording
                                  ? "The resourceVersion for the provided watch is too old."
                                  : "too old resource version: " + rvParam + " (" +
                                        std::to_string(compactedRv_ + 1) + ")";
            expired = json{{"type", "ERROR"}, {"object", statusBody(410, "Expired", msg)}};
          }
        }
        ++openWatches_;
      }
      struct Closing {
        ApiServer& s;
        ~Closing() {
          std::lock_guard lock(s.mu_);
          --s.openWatches_;
        }
      } closing{*this};
      bhttp::response<bhttp::empty_body> head{bhttp::status::ok, 11};
      head.set(bhttp::field::content_type, "application/json");
      head.set(bhttp::field::cache_control, "no-cache, private");
      head.chunked(true);
      bhttp::response_serializer<bhttp::empty_body> sr{head};
      bhttp::write_header(stream, sr);
      auto send = [&](const json& event) {
        std::string line = event.dump() + "\n";
        bool split;
        {
          std::lock_guard lock(mu_);
          split = split_;
        }
        if (!split) {
          net::write(stream, bhttp::make_chunk(net::buffer(line)));
          return;
        }
        // Three chunks cut inside the JSON text, with pauses so the client reads them apart.
        size_t a = line.size() / 3, b = 2 * line.size() / 3;
        for (auto [from, to] : {std::pair{size_t{0}, a}, {a, b}, {b, line.size()}}) {
          net::write(stream, bhttp::make_chunk(net::buffer(line.data() + from, to - from)));
          std::this_thread::sleep_for(std::chrono::milliseconds(3));
        }
      };
      if (expired) {
        send(*expired);
        net::write(stream, bhttp::make_chunk_last());
        return;
      }
      for (const auto& e : initial) send(e);
      auto nextBookmark = Clock::now() + options_.bookmarkInterval;
      for (;;) {
        std::vector<json> out;
        bool cut = false;
        bool bookmarkDue = false;
        uint64_t bookmarkRv = 0;
        {
          std::unique_lock lock(mu_);
          auto wakeAt = std::min(deadline, bookmarks ? nextBookmark : deadline);
          changed_.wait_until(lock, wakeAt, [&] {
            return stopping_ || cutGeneration_ != cutGen ||
                   (!stall_ && !history_.empty() && history_.back().rv > cursor);
          });
          if (stopping_) return;
          cut = cutGeneration_ != cutGen;
          if (!cut && !stall_) {
            for (const Event& e : history_) {
              if (e.rv <= cursor) continue;
              cursor = e.rv;
              if (e.resource != res->plural) continue;
              bool was = !e.previous.is_null() && visible(e.previous);
              bool is = visible(e.object);
              std::string type = e.type;
              if (type == "MODIFIED" && was != is) type = is ? "ADDED" : "DELETED";
              if (type == "DELETED" ? was || is : is)
                out.push_back({{"type", type}, {"object", withKind(e.object)}});
            }
            bookmarkRv = std::max(cursor, rv_);
          }
          if (bookmarks && Clock::now() >= nextBookmark && !stall_) {
            bookmarkDue = true;
            nextBookmark = Clock::now() + options_.bookmarkInterval;
          }
        }
        if (cut) {
          // Half an event, then a reset: what a dying apiserver or a cut middlebox leaves.
          std::string half = json{{"type", "ADDED"}, {"object", res->empty}}.dump();
          net::write(stream, bhttp::make_chunk(net::buffer(half.data(), half.size() / 2)));
          conn->sock.set_option(net::socket_base::linger(true, 0));
          conn->sock.close();
          return;
        }
        for (const auto& e : out) send(e);
        if (bookmarkDue) {
          json obj = res->empty;
          obj["metadata"] = {{"resourceVersion", std::to_string(bookmarkRv)}};
          send({{"type", "BOOKMARK"}, {"object", withKind(obj)}});
        }
        if (Clock::now() >= deadline) {
          net::write(stream, bhttp::make_chunk_last());
          return;
        }
      }
    }

    if (req.method() == bhttp::verb::get && name.empty()) {
      // ---- LIST ----
      std::unique_lock lock(mu_);
      uint64_t listRv = rv_;
      std::string start;
      std::string cont = param("continue");
      std::string rvParam = param("resourceVersion");
      std::optional<std::pair<int, json>> error;
      if (!cont.empty()) {
        auto raw = unbase64url(cont);
        json token = raw ? json::parse(*raw, nullptr, false) : json();
        if (!token.is_object() || !token.contains("rv")) {
          error = {400, statusBody(400, "BadRequest", "continue key is not valid")};
        } else {
          listRv = token["rv"].get<uint64_t>();
          start = token.value("start", "");
          auto issued = Clock::time_point(Clock::duration(token.value("t", int64_t{0})));
          if (listRv < compactedRv_ || Clock::now() - issued > options_.continueTtl)
            error = {410, statusBody(410, "Expired",
                                     "The provided continue parameter is too old to display a "
                                     "consistent list result. You can start a new list without "
                                     "the continue parameter.")};
        }
      } else if (!rvParam.empty() && rvParam != "0") {
        uint64_t want = std::stoull(rvParam);
        if (want > rv_) {
          json details = {{"causes", json::array({{{"reason", "ResourceVersionTooLarge"},
                                                   {"message", "Too large resource version"}}})},
                          {"retryAfterSeconds", 1}};
          error = {504, statusBody(504, "Timeout",
                                   "Timeout: Too large resource version: " + rvParam +
                                       ", current: " + std::to_string(rv_),
                                   details)};
        } else if (want < compactedRv_ &&
                   (options_.listOldRvIs410 || param("resourceVersionMatch") == "Exact")) {
          error = {410, statusBody(410, "Expired",
                                   "The resourceVersion for the provided list is too old.")};
        } else if (param("resourceVersionMatch") == "Exact") {
          listRv = want;
        }
      }
      if (error) {
        lock.unlock();
        reply(error->first, error->second);
        if (!req.keep_alive()) return;
        continue;
      }
      // The state at listRv: today's objects with later history undone.
      std::map<std::string, json> state = store_[res->plural];
      for (auto it = history_.rbegin(); it != history_.rend() && it->rv > listRv; ++it) {
        if (it->resource != res->plural) continue;
        if (it->previous.is_null()) {
          state.erase(keyOf(it->object));
        } else {
          state[keyOf(it->previous)] = it->previous;
        }
      }
      size_t limit = param("limit").empty() ? 0 : std::stoul(param("limit"));
      json items = json::array();
      std::string last;
      size_t remaining = 0;
      for (auto& [k, obj] : state) {
        if (k < start || !visible(obj)) continue;
        if (limit && items.size() == limit) {
          ++remaining;
          continue;
        }
        items.push_back(obj);
        last = k;
      }
      json meta = {{"resourceVersion", std::to_string(listRv)}};
      if (remaining) {
        meta["continue"] = base64url(
            json{{"v", "meta.k8s.io/v1"}, {"rv", listRv}, {"start", last + std::string(1, '\0')},
                 {"t", Clock::now().time_since_epoch().count()}}
                .dump());
        if (selector.empty()) meta["remainingItemCount"] = remaining;
      }
      lock.unlock();
      reply(200, {{"kind", res->kind + "List"},
                  {"apiVersion", res->prefix == "/api/v1" ? "v1" : res->prefix.substr(6)},
                  {"metadata", meta},
                  {"items", items}});
      if (!req.keep_alive()) return;
      continue;
    }

    // ---- single objects ----
    std::string key = ns + "/" + name;
    json body = json::parse(req.body(), nullptr, false);
    if (req.method() == bhttp::verb::get) {
      std::unique_lock lock(mu_);
      auto& m = store_[res->plural];
      auto it = m.find(key);
      if (it == m.end()) {
        lock.unlock();
        fail(404, "NotFound", res->plural + " \"" + name + "\" not found",
             {{"name", name}, {"kind", res->plural}});
      } else {
        json obj = withKind(it->second);
        lock.unlock();
        reply(200, obj);
      }
    } else if (req.method() == bhttp::verb::post && name.empty()) {
      if (!body.is_object()) {
        fail(400, "BadRequest", "body is not a JSON object");
      } else {
        if (!res->clusterScoped)
          body["metadata"]["namespace"] = ns.empty() ? body["metadata"].value("namespace", "default") : ns;
        // Check and create under one lock: two clients racing to create get one 201, one 409.
        std::unique_lock lock(mu_);
        if (store_[res->plural].count(keyOf(body)) > 0) {
          lock.unlock();
          fail(409, "AlreadyExists", res->plural + " \"" + body["metadata"].value("name", "") +
                                         "\" already exists");
        } else {
          json created = withKind(createLocked(res->plural, body));
          lock.unlock();
          reply(201, created);
        }
      }
    } else if (req.method() == bhttp::verb::put && !name.empty()) {
      // Precondition and write under one lock, so concurrent writers with the same
      // resourceVersion get exactly one 200.
      std::unique_lock lock(mu_);
      auto& m = store_[res->plural];
      auto it = m.find(key);
      auto injected = injectedConflicts_.find(res->plural);
      if (!body.is_object()) {
        lock.unlock();
        fail(400, "BadRequest", "body is not a JSON object");
      } else if (it == m.end()) {
        lock.unlock();
        fail(404, "NotFound", res->plural + " \"" + name + "\" not found");
      } else if (std::string want = body["metadata"].value("resourceVersion", "");
                 (!want.empty() && want != it->second["metadata"].value("resourceVersion", "")) ||
                 (injected != injectedConflicts_.end() && injected->second > 0)) {
        if (injected != injectedConflicts_.end() && injected->second > 0) --injected->second;
        lock.unlock();
        fail(409, "Conflict",
             "Operation cannot be fulfilled on " + res->plural + " \"" + name +
                 "\": the object has been modified; please apply your changes to the latest "
                 "version and try again");
      } else {
        if (!res->clusterScoped) body["metadata"]["namespace"] = ns;
        body["metadata"]["name"] = name;
        json updated = withKind(updateLocked(res->plural, body));
        lock.unlock();
        reply(200, updated);
      }
    } else if (req.method() == bhttp::verb::delete_ && !name.empty()) {
      std::unique_lock lock(mu_);
      auto& m = store_[res->plural];
      auto it = m.find(key);
      if (it == m.end()) {
        lock.unlock();
        fail(404, "NotFound", res->plural + " \"" + name + "\" not found");
      } else if (json pre = body.is_object() ? body.value("preconditions", json::object()) : json::object();
                 (pre.contains("resourceVersion") &&
                  pre["resourceVersion"] != it->second["metadata"].value("resourceVersion", "")) ||
                 (pre.contains("uid") && pre["uid"] != it->second["metadata"].value("uid", ""))) {
        // DeleteOptions.preconditions, as kube-apiserver checks them.
        lock.unlock();
        fail(409, "Conflict",
             "Operation cannot be fulfilled on " + res->plural + " \"" + name +
                 "\": the precondition does not match the object");
      } else {
        json obj = withKind(it->second);
        lock.unlock();
        remove(res->plural, ns, name);
        reply(200, obj);
      }
    } else {
      fail(405, "MethodNotAllowed", "the server does not allow this method on the requested resource");
    }
    if (!req.keep_alive()) return;
  }
}

bool ApiServer::clusterScoped(const std::string& resource) const {
  for (const auto& r : resources_)
    if (r.plural == resource) return r.clusterScoped;
  return false;
}

json ApiServer::stripped(const std::string& resource, json obj) const {
  obj.erase("kind");
  obj.erase("apiVersion");
  if (clusterScoped(resource)) {
    if (obj["metadata"].is_object()) obj["metadata"].erase("namespace");
  } else if (!obj["metadata"].contains("namespace")) {
    obj["metadata"]["namespace"] = "default";
  }
  return obj;
}

json ApiServer::create(const std::string& resource, json object) {
  std::lock_guard lock(mu_);
  return createLocked(resource, std::move(object));
}

json ApiServer::createLocked(const std::string& resource, json object) {
  json obj = stripped(resource, std::move(object));
  uint64_t rv = ++rv_;
  obj["metadata"]["resourceVersion"] = std::to_string(rv);
  obj["metadata"]["uid"] = "00000000-0000-0000-0000-" + std::to_string(1000000000000ull + rv);
  obj["metadata"]["creationTimestamp"] = "2026-11-25T00:00:00Z";
  store_[resource][keyOf(obj)] = obj;
  history_.push_back({rv, resource, "ADDED", obj, nullptr});
  changed_.notify_all();
  return obj;
}

json ApiServer::update(const std::string& resource, json object) {
  std::lock_guard lock(mu_);
  return updateLocked(resource, std::move(object));
}

json ApiServer::updateLocked(const std::string& resource, json object) {
  json obj = stripped(resource, std::move(object));
  auto& m = store_[resource];
  auto it = m.find(keyOf(obj));
  if (it == m.end()) return createLocked(resource, obj);
  uint64_t rv = ++rv_;
  for (const char* keep : {"uid", "creationTimestamp"})
    if (it->second["metadata"].contains(keep)) obj["metadata"][keep] = it->second["metadata"][keep];
  obj["metadata"]["resourceVersion"] = std::to_string(rv);
  history_.push_back({rv, resource, "MODIFIED", obj, it->second});
  it->second = obj;
  changed_.notify_all();
  return obj;
}

std::optional<json> ApiServer::get(const std::string& resource, const std::string& ns,
                                   const std::string& name) const {
  std::lock_guard lock(mu_);
  auto r = store_.find(resource);
  if (r == store_.end()) return std::nullopt;
  auto it = r->second.find(ns + "/" + name);
  if (it == r->second.end()) return std::nullopt;
  return it->second;
}

std::vector<json> ApiServer::list(const std::string& resource) const {
  std::lock_guard lock(mu_);
  std::vector<json> out;
  auto r = store_.find(resource);
  if (r != store_.end())
    for (const auto& [k, obj] : r->second) out.push_back(obj);
  return out;
}

void ApiServer::rejectWatches(const std::string& resource, int code, int count) {
  std::lock_guard lock(mu_);
  rejectedWatches_[resource] = {code, count};
}

void ApiServer::injectConflicts(const std::string& resource, int count) {
  std::lock_guard lock(mu_);
  injectedConflicts_[resource] = count;
}

void ApiServer::remove(const std::string& resource, const std::string& ns, const std::string& name) {
  std::lock_guard lock(mu_);
  auto& m = store_[resource];
  auto it = m.find(ns + "/" + name);
  if (it == m.end()) return;
  uint64_t rv = ++rv_;
  json last = it->second;
  last["metadata"]["resourceVersion"] = std::to_string(rv);
  history_.push_back({rv, resource, "DELETED", last, it->second});
  m.erase(it);
  changed_.notify_all();
}

uint64_t ApiServer::resourceVersion() const {
  std::lock_guard lock(mu_);
  return rv_;
}

void ApiServer::compact() {
  std::lock_guard lock(mu_);
  compactedRv_ = rv_;
  history_.clear();
}

void ApiServer::setTokens(std::set<std::string> tokens) {
  std::lock_guard lock(mu_);
  options_.tokens = std::move(tokens);
}

void ApiServer::cutWatches() {
  {
    std::lock_guard lock(mu_);
    ++cutGeneration_;
  }
  changed_.notify_all();
}

void ApiServer::setSplitEvents(bool on) {
  std::lock_guard lock(mu_);
  split_ = on;
}

void ApiServer::setStall(bool on) {
  {
    std::lock_guard lock(mu_);
    stall_ = on;
  }
  changed_.notify_all();
}

std::vector<RecordedRequest> ApiServer::requests() const {
  std::lock_guard lock(mu_);
  return requests_;
}

size_t ApiServer::watchCount() const {
  std::lock_guard lock(mu_);
  return openWatches_;
}

}  // namespace sluice::testing
