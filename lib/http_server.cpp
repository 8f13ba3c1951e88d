#include "sluice/http_server.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <optional>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "sluice/netns.h"

namespace sluice {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

std::string HttpRequest::header(const std::string& lowerName) const {
  auto it = headers.find(lowerName);
  return it == headers.end() ? std::string() : it->second;
}

HttpResponse HttpResponse::text(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

HttpResponse HttpResponse::json(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.contentType = "application/json";
  r.body = std::move(body);
  return r;
}

Status parseHostPort(const std::string& text, std::string* host, uint16_t* port) {
  auto bad = [&](const std::string& why) {
    return Status(Code::kInvalidArgument, fmt::format("address \"{}\": {}", text, why));
  };
  size_t colon;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return bad("want [IPv6]:PORT");
    *host = text.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = text.rfind(':');
    if (colon == std::string::npos) return bad("want HOST:PORT");
    *host = text.substr(0, colon);
    if (host->find(':') != std::string::npos) return bad("an IPv6 address needs brackets: [ADDR]:PORT");
  }
  if (host->empty()) *host = "0.0.0.0";
  const std::string portText = text.substr(colon + 1);
  unsigned value = 0;
  auto [end, ec] = std::from_chars(portText.data(), portText.data() + portText.size(), value);
  if (portText.empty() || ec != std::errc() || end != portText.data() + portText.size() || value > 65535)
    return bad("port must be a number 0-65535");
  boost::system::error_code addrEc;
  net::ip::make_address(*host, addrEc);
  if (addrEc) return bad(fmt::format("\"{}\" is not an IP address", *host));
  *port = static_cast<uint16_t>(value);
  return Status::ok();
}

namespace {

std::string formatEndpoint(const net::ip::address& address, uint16_t port) {
  return address.is_v6() ? fmt::format("[{}]:{}", address.to_string(), port)
                         : fmt::format("{}:{}", address.to_string(), port);
}

struct Route {
  std::string method;
  std::string path;
  HttpHandler handler;
  HttpRouteOptions options;
};

// Constant-time comparison so a token cannot be guessed byte by byte from response timing.
bool sameSecret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i % (b.size() + 1)]);
  return diff == 0;
}

}  // namespace

struct HttpServer::Impl {
  const HttpServerOptions& options;
  std::vector<Route> routes;
  std::unique_ptr<net::io_context> ioc;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::vector<std::thread> threads;
  std::atomic<size_t> connections{0};
  uint16_t boundPort = 0;
  std::string boundAddress;

  explicit Impl(const HttpServerOptions& o) : options(o) {}

  HttpResponse dispatch(const HttpRequest& req) const;
  void accept();
};

namespace {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpServer::Impl& server)
      : stream_(std::move(socket)), server_(server) {
    server_.connections.fetch_add(1);
  }
  ~Session() { server_.connections.fetch_sub(1); }

  void start() { readRequest(); }

 private:
  void readRequest() {
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(std::min<size_t>(server_.options.maxHeaderBytes, UINT32_MAX)));
    parser_->body_limit(server_.options.maxBodyBytes);
    // The first request has requestTimeout to arrive; a kept-alive connection idleTimeout for
    // its next one. Either way the whole request must arrive before the deadline.
    stream_.expires_after(requests_ == 0 ? server_.options.requestTimeout : server_.options.idleTimeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->onRead(ec); });
  }

  void onRead(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == net::error::eof || ec == beast::error::timeout ||
        ec == net::error::operation_aborted || ec == net::error::connection_reset) {
      close();
      return;
    }
    if (ec == http::error::header_limit) return sendError(431, "request header too large\n");
    if (ec == http::error::body_limit) return sendError(413, "request body too large\n");
    if (ec) return sendError(400, fmt::format("bad request: {}\n", ec.message()));

    auto& msg = parser_->get();
    HttpRequest req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    size_t q = req.target.find('?');
    req.path = req.target.substr(0, q);
    if (q != std::string::npos) req.query = req.target.substr(q + 1);
    for (const auto& field : msg) {
      std::string name(field.name_string());
      std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
      auto [it, fresh] = req.headers.emplace(name, std::string(field.value()));
      if (!fresh) it->second += ", " + std::string(field.value());  // repeated header: RFC 9110 §5.3
    }
    req.body = std::move(msg.body());
    beast::error_code rec;
    auto remote = stream_.socket().remote_endpoint(rec);
    if (!rec) req.remote = formatEndpoint(remote.address(), remote.port());

    keepAlive_ = msg.keep_alive();
    ++requests_;
    write(server_.dispatch(req), msg.version(), req.method == "HEAD");
  }

  void sendError(int status, std::string body) {
    keepAlive_ = false;  // the parser's state is unknown after an error: do not reuse
    write(HttpResponse::text(status, std::move(body)), 11, false);
  }

  void write(HttpResponse r, unsigned version, bool head) {
    res_ = {};
    res_.version(version);
    res_.result(static_cast<unsigned>(r.status));
    res_.set(http::field::server, server_.options.serverName);
    res_.set(http::field::content_type, r.contentType);
    for (auto& [name, value] : r.headers) res_.set(name, value);
    res_.body() = std::move(r.body);
    res_.keep_alive(keepAlive_);
    res_.prepare_payload();
    serializer_.emplace(res_);
    stream_.expires_after(server_.options.writeTimeout);
    auto done = [self = shared_from_this()](beast::error_code ec, size_t) { self->onWrite(ec); };
    // A HEAD response carries the GET response's headers (Content-Length included), no body.
    if (head) http::async_write_header(stream_, *serializer_, std::move(done));
    else http::async_write(stream_, *serializer_, std::move(done));
  }

  void onWrite(beast::error_code ec) {
    if (ec || !keepAlive_) return close();
    readRequest();
  }

  void close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.socket().close(ec);
  }

  beast::tcp_stream stream_;
  HttpServer::Impl& server_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> res_;
  std::optional<http::response_serializer<http::string_body>> serializer_;
  bool keepAlive_ = false;
  size_t requests_ = 0;
};

}  // namespace

HttpResponse HttpServer::Impl::dispatch(const HttpRequest& req) const {
  const std::string method = req.method == "HEAD" ? "GET" : req.method;
  const Route* match = nullptr;
  std::vector<std::string> allowed;
  for (const std::string& path : {req.path, std::string("*")}) {
    for (const Route& r : routes) {
      if (r.path != path) continue;
      allowed.push_back(r.method);
      if (r.method == method) match = &r;
    }
    if (!allowed.empty()) break;  // an exact path wins over the catch-all
  }
  if (allowed.empty()) return HttpResponse::text(404, "404 page not found\n");
  if (!match) {
    if (std::find(allowed.begin(), allowed.end(), "GET") != allowed.end()) allowed.push_back("HEAD");
    HttpResponse r = HttpResponse::text(405, "method not allowed\n");
    r.headers.emplace_back("Allow", fmt::format("{}", fmt::join(allowed, ", ")));
    return r;
  }
  if (!match->options.bearerToken.empty()) {
    const std::string auth = req.header("authorization");
    const std::string prefix = "Bearer ";
    if (auth.size() <= prefix.size() || auth.compare(0, prefix.size(), prefix) != 0 ||
        !sameSecret(auth.substr(prefix.size()), match->options.bearerToken)) {
      HttpResponse r = HttpResponse::text(401, "unauthorized\n");
      r.headers.emplace_back("WWW-Authenticate", "Bearer");
      return r;
    }
  }
  try {
    return match->handler(req);
  } catch (const std::exception& e) {
    spdlog::error("http: handler for {} {} threw: {}", req.method, req.path, e.what());
    return HttpResponse::text(500, "internal error\n");
  }
}

void HttpServer::Impl::accept() {
  acceptor->async_accept(net::make_strand(*ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor->is_open()) return;
    if (!ec) {
      if (connections.load() >= options.maxConnections) {
        beast::error_code ignored;
        socket.close(ignored);  // over the limit: refuse cheaply rather than queue
      } else {
        std::make_shared<Session>(std::move(socket), *this)->start();
      }
    } else {
      spdlog::warn("http {}: accept: {}", boundAddress, ec.message());
    }
    accept();
  });
}

HttpServer::HttpServer(HttpServerOptions options)
    : options_(std::move(options)), impl_(std::make_unique<Impl>(options_)) {}

HttpServer::~HttpServer() { stop(); }

void HttpServer::route(const std::string& method, const std::string& path, HttpHandler handler,
                       HttpRouteOptions options) {
  impl_->routes.push_back({method, path, std::move(handler), std::move(options)});
}

Status HttpServer::start() {
  if (running()) return Status(Code::kFailedPrecondition, "http server already running");
  boost::system::error_code ec;
  auto address = net::ip::make_address(options_.address, ec);
  if (ec) return Status(Code::kInvalidArgument, fmt::format("\"{}\" is not an IP address", options_.address));
  const tcp::endpoint endpoint(address, options_.port);

  auto ioc = std::make_unique<net::io_context>(static_cast<int>(std::max(1u, options_.threads)));
  auto acceptor = std::make_unique<tcp::acceptor>(*ioc);
  std::string step;
  // The socket belongs to the namespace of the thread that creates it, for its whole life.
  Status ns = runInNetns(options_.netns, [&] {
    step = "socket";
    acceptor->open(endpoint.protocol(), ec);
    if (ec) return;
    acceptor->set_option(net::socket_base::reuse_address(true), ec);
    step = "bind";
    acceptor->bind(endpoint, ec);
    if (ec) return;
    step = "listen";
    acceptor->listen(net::socket_base::max_listen_connections, ec);
  });
  if (!ns) return ns.withContext("http server");
  const std::string where = formatEndpoint(address, options_.port);
  if (ec) {
    const std::string message = fmt::format("http server {}: {}: {}", where, step, ec.message());
    // A port taken by another process is the one failure callers act on (report, retry later).
    if (ec.value() == EADDRINUSE) return Status(Code::kAlreadyExists, message, EADDRINUSE);
    return Status::fromErrno(ec.value(), message);
  }

  auto local = acceptor->local_endpoint(ec);
  impl_->boundPort = ec ? 0 : local.port();
  impl_->boundAddress = formatEndpoint(address, impl_->boundPort);
  impl_->ioc = std::move(ioc);
  impl_->acceptor = std::move(acceptor);
  impl_->accept();
  for (unsigned i = 0; i < std::max(1u, options_.threads); ++i)
    impl_->threads.emplace_back([ioc = impl_->ioc.get()] { ioc->run(); });
  spdlog::debug("http: serving on {}{}", impl_->boundAddress,
                options_.netns.empty() ? "" : fmt::format(" in netns {}", options_.netns));
  return Status::ok();
}

void HttpServer::stop() {
  if (!impl_->ioc) return;
  impl_->ioc->stop();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
  // Destroying the io_context destroys the pending handlers, which own the sessions, which
  // close their sockets; the acceptor goes first so no new connection slips in.
  impl_->acceptor.reset();
  impl_->ioc.reset();
  impl_->boundPort = 0;
  impl_->boundAddress.clear();
}

bool HttpServer::running() const { return impl_->ioc != nullptr; }
uint16_t HttpServer::port() const { return impl_->boundPort; }
std::string HttpServer::boundAddress() const { return impl_->boundAddress; }

}  // namespace sluice
