// HTTP/1.1 client on Boost.Beast. Every operation is asynchronous underneath (so it can carry a
// deadline — Asio's blocking calls cannot) and is driven to completion by the calling thread
// through run_one(); cancel() posts a socket close onto the same io_context, which makes the
// pending operation complete with operation_aborted on the calling thread.
#include "sluice/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <strings.h>

#include <charconv>
#include <cstdint>
#include <limits>
#include <optional>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <fmt/format.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

namespace sluice::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace ssl = boost::asio::ssl;
using tcp = net::ip::tcp;
using std::chrono::milliseconds;

namespace {

// Bodies read whole (LIST replies, errors) are bounded; a stream's body is not.
constexpr uint64_t kMaxWholeBody = 256ull << 20;

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

bool isIpLiteral(std::string_view host) {
  std::string h(host);
  in6_addr buf{};
  return inet_pton(AF_INET, h.c_str(), &buf) == 1 || inet_pton(AF_INET6, h.c_str(), &buf) == 1;
}

std::string Url::hostHeader() const {
  bool v6 = host.find(':') != std::string::npos;
  return fmt::format("{}{}{}:{}", v6 ? "[" : "", host, v6 ? "]" : "", port);
}

std::string Url::toString() const { return scheme + "://" + hostHeader() + basePath; }

Result<Url> parseUrl(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Status(Code::kInvalidArgument, fmt::format("URL \"{}\": {}", text, why));
  };
  Url url;
  size_t sep = text.find("://");
  if (sep == std::string_view::npos) return bad("missing scheme (http:// or https://)");
  for (char c : text.substr(0, sep)) url.scheme.push_back(static_cast<char>(std::tolower(c)));
  if (url.scheme != "http" && url.scheme != "https") return bad("scheme must be http or https");
  std::string_view rest = text.substr(sep + 3);
  if (rest.find_first_of("?#") != std::string_view::npos) return bad("query or fragment not allowed");
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash);
  if (authority.find('@') != std::string_view::npos) return bad("user info not allowed");
  std::string_view portText;
  if (!authority.empty() && authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("unterminated [IPv6] host");
    url.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("junk after [IPv6] host");
      portText = after.substr(1);
    }
    if (!isIpLiteral(url.host) || url.host.find(':') == std::string::npos)
      return bad("bracketed host is not an IPv6 address");
  } else {
    size_t colon = authority.find(':');
    if (colon != std::string_view::npos && authority.find(':', colon + 1) != std::string_view::npos)
      return bad("IPv6 host must be in brackets");
    url.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) portText = authority.substr(colon + 1);
  }
  if (url.host.empty()) return bad("empty host");
  url.port = url.tls() ? 443 : 80;
  if (!portText.empty()) {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(portText.data(), portText.data() + portText.size(), value);
    if (ec != std::errc() || end != portText.data() + portText.size() || value == 0 ||
        value > 65535)
      return bad("bad port");
    url.port = static_cast<uint16_t>(value);
  }
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  url.basePath = std::string(path);
  return url;
}

std::string Response::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (equalsIgnoreCase(k, name)) return v;
  return {};
}

struct Connection::Impl {
  ConnectionOptions opts;
  net::io_context io;  // declared before the streams: they die first
  std::atomic<bool> cancelled{false};
  std::optional<ssl::context> ctx;
  Status ctxStatus;
  std::optional<beast::tcp_stream> plain;
  std::optional<beast::ssl_stream<beast::tcp_stream>> secure;
  beast::flat_buffer buffer;
  bool open = false;

  explicit Impl(ConnectionOptions o) : opts(std::move(o)) {
    if (opts.url.tls()) ctxStatus = makeContext();
  }

  Status makeContext() {
    ctx.emplace(ssl::context::tls_client);
    SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
    const TlsConfig& t = opts.tls;
    beast::error_code ec;
    auto fail = [&](const std::string& what) {
      return Status(Code::kInvalidArgument, fmt::format("TLS {}: {}", what, ec.message()));
    };
    ctx->set_verify_mode(t.insecureSkipVerify ? ssl::verify_none : ssl::verify_peer, ec);
    if (!t.caData.empty()) {
      if (ctx->add_certificate_authority(net::buffer(t.caData), ec); ec) return fail("CA data");
    } else if (!t.caFile.empty()) {
      if (ctx->load_verify_file(t.caFile, ec); ec) return fail("CA file " + t.caFile);
    } else if (ctx->set_default_verify_paths(ec); ec) {
      return fail("system CA paths");
    }
    if (!t.certData.empty()) {
      if (ctx->use_certificate_chain(net::buffer(t.certData), ec); ec) return fail("client cert");
    } else if (!t.certFile.empty()) {
      if (ctx->use_certificate_chain_file(t.certFile, ec); ec) return fail("client cert file");
    }
    if (!t.keyData.empty()) {
      if (ctx->use_private_key(net::buffer(t.keyData), ssl::context::pem, ec); ec)
        return fail("client key");
    } else if (!t.keyFile.empty()) {
      if (ctx->use_private_key_file(t.keyFile, ssl::context::pem, ec); ec)
        return fail("client key file");
    }
    return {};
  }

  beast::tcp_stream& lowest() { return secure ? beast::get_lowest_layer(*secure) : *plain; }

  // Runs the operation started by `start(handler)` to completion on this thread.
  template <class Start>
  beast::error_code await(Start&& start) {
    bool done = false;
    beast::error_code result;
    start([&](beast::error_code ec, auto&&...) {
      result = ec;
      done = true;
    });
    while (!done) {
      if (io.stopped()) io.restart();
      io.run_one();
    }
    return result;
  }

  // Applies `f` to whichever stream is in use.
  template <class F>
  beast::error_code withStream(F&& f) {
    if (secure) return f(*secure);
    return f(*plain);
  }

  Status failure(beast::error_code ec, std::string_view what) {
    if (cancelled) return Status(Code::kAborted, "cancelled");
    close();
    if (ec == beast::error::timeout)
      return Status(Code::kUnavailable, fmt::format("{} {}: timed out", what, opts.url.toString()));
    return Status(Code::kUnavailable,
                  fmt::format("{} {}: {}", what, opts.url.toString(), ec.message()));
  }

  // Closes the socket but keeps the stream objects: an operation may still be pending on them
  // (cancel() runs this between the operation's start and its completion handler).
  void closeSocket() {
    beast::error_code ignored;
    if (plain) plain->socket().close(ignored);
    if (secure) beast::get_lowest_layer(*secure).socket().close(ignored);
  }

  void close() {
    closeSocket();
    plain.reset();
    secure.reset();
    buffer.clear();
    open = false;
  }

  void setKeepAlive(tcp::socket& s) {
    beast::error_code ignored;
    s.set_option(tcp::socket::keep_alive(true), ignored);
    s.set_option(tcp::no_delay(true), ignored);
    int fd = s.native_handle();
    int idle = static_cast<int>(opts.keepAliveIdle.count());
    int intvl = static_cast<int>(opts.keepAliveInterval.count());
    int cnt = opts.keepAliveCount;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    unsigned userTimeout = static_cast<unsigned>((idle + intvl * cnt) * 1000);
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &userTimeout, sizeof userTimeout);
  }

  Status connect() {
    if (cancelled) return Status(Code::kAborted, "cancelled");
    if (!ctxStatus.isOk()) return ctxStatus;
    if (open) return {};
    close();
    tcp::resolver resolver(io);
    tcp::resolver::results_type endpoints;
    beast::error_code ec = await([&](auto handler) {
      resolver.async_resolve(opts.url.host, std::to_string(opts.url.port),
                             [&endpoints, handler](beast::error_code e, tcp::resolver::results_type r) {
                               endpoints = std::move(r);
                               handler(e);
                             });
    });
    if (ec) return failure(ec, "resolve");
    if (opts.url.tls()) {
      secure.emplace(io, *ctx);
    } else {
      plain.emplace(io);
    }
    lowest().expires_after(opts.connectTimeout);
    ec = await([&](auto handler) { lowest().async_connect(endpoints, handler); });
    if (ec) return failure(ec, "connect");
    setKeepAlive(lowest().socket());
    if (secure) {
      SSL* handle = secure->native_handle();
      const std::string& name = opts.tls.serverName.empty() ? opts.url.host : opts.tls.serverName;
      // SNI carries DNS names only (RFC 6066 §3); an IP is verified against the IP SANs.
      if (!isIpLiteral(name)) SSL_set_tlsext_host_name(handle, name.c_str());
      if (!opts.tls.insecureSkipVerify) {
        X509_VERIFY_PARAM* param = SSL_get0_param(handle);
        if (isIpLiteral(name)) {
          X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str());
        } else {
          X509_VERIFY_PARAM_set1_host(param, name.c_str(), name.size());
        }
      }
      lowest().expires_after(opts.connectTimeout);
      ec = await([&](auto handler) { secure->async_handshake(ssl::stream_base::client, handler); });
      if (ec) return failure(ec, "TLS handshake with");
    }
    open = true;
    return {};
  }

  Status send(const Request& request, milliseconds timeout) {
    bhttp::verb verb = bhttp::string_to_verb(request.method);
    if (verb == bhttp::verb::unknown)
      return Status(Code::kInvalidArgument, "unknown HTTP method " + request.method);
    bhttp::request<bhttp::string_body> req{verb, opts.url.basePath + request.target, 11};
    req.set(bhttp::field::host, opts.url.hostHeader());
    req.set(bhttp::field::user_agent, "sluice/0.1");
    bool hasContentType = false;
    for (const auto& [k, v] : request.headers) {
      req.set(k, v);
      hasContentType |= equalsIgnoreCase(k, "content-type");
    }
    if (!request.body.empty()) {
      if (!hasContentType) req.set(bhttp::field::content_type, "application/json");
      req.body() = request.body;
    }
    req.prepare_payload();
    lowest().expires_after(timeout);
    beast::error_code ec = withStream([&](auto& s) {
      return await([&](auto handler) { bhttp::async_write(s, req, handler); });
    });
    return ec ? failure(ec, "send to") : Status();
  }

  template <class Message>
  static std::vector<Header> headersOf(const Message& m) {
    std::vector<Header> out;
    for (const auto& f : m) out.emplace_back(std::string(f.name_string()), std::string(f.value()));
    return out;
  }

  Result<Response> roundTrip(const Request& request, milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    bool reused = open;
    if (Status s = connect(); !s) return s;
    if (Status s = send(request, timeout); !s) {
      // A kept-alive socket the server closed in between fails on first use: retry once fresh.
      if (!reused || s.code() == Code::kAborted) return s;
      if (Status again = connect(); !again) return again;
      if (Status again = send(request, timeout); !again) return again;
    }
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(kMaxWholeBody);
    lowest().expires_at(deadline);
    beast::error_code ec = withStream([&](auto& s) {
      return await([&](auto handler) { bhttp::async_read(s, buffer, parser, handler); });
    });
    if (ec) return failure(ec, "read from");
    auto& msg = parser.get();
    Response response{static_cast<int>(msg.result_int()), headersOf(msg), std::move(msg.body())};
    if (!msg.keep_alive()) close();
    return response;
  }

  Result<Response> stream(const Request& request, milliseconds headTimeout, milliseconds idleTimeout,
                          const BodySink& sink) {
    close();  // a stream always starts on a fresh socket and never leaves one behind
    if (Status s = connect(); !s) return s;
    if (Status s = send(request, headTimeout); !s) return s;
    bhttp::response_parser<bhttp::buffer_body> parser;
    // No limit, spelled as the largest one: Boost 1.74 compares a Content-Length with an unset
    // limit (boost::none) as exceeding it, so any reply with a Content-Length failed.
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    lowest().expires_after(headTimeout);
    beast::error_code ec = withStream([&](auto& s) {
      return await([&](auto handler) { bhttp::async_read_header(s, buffer, parser, handler); });
    });
    if (ec) return failure(ec, "read response head from");
    Response response{static_cast<int>(parser.get().result_int()), headersOf(parser.get()), {}};
    if (response.status < 200 || response.status >= 300) {
      // Error replies are small Status documents: read them whole for the caller.
      bhttp::response_parser<bhttp::string_body> whole{std::move(parser)};
      whole.body_limit(kMaxWholeBody);
      lowest().expires_after(headTimeout);
      ec = withStream([&](auto& s) {
        return await([&](auto handler) { bhttp::async_read(s, buffer, whole, handler); });
      });
      if (ec) return failure(ec, "read error body from");
      response.body = std::move(whole.get().body());
      close();
      return response;
    }
    char chunk[16384];
    while (!parser.is_done()) {
      parser.get().body().data = chunk;
      parser.get().body().size = sizeof chunk;
      lowest().expires_after(idleTimeout);
      ec = withStream([&](auto& s) {
        return await([&](auto handler) { bhttp::async_read_some(s, buffer, parser, handler); });
      });
      if (ec == bhttp::error::need_buffer) ec = {};
      if (ec == beast::error::timeout) {
        if (cancelled) return Status(Code::kAborted, "cancelled");
        close();
        return Status(Code::kUnavailable, fmt::format("stream from {}: idle timeout, no data for {} ms",
                                                      opts.url.toString(), idleTimeout.count()));
      }
      if (ec) return failure(ec, "stream from");
      size_t n = sizeof chunk - parser.get().body().size;
      if (n > 0 && !sink(std::string_view(chunk, n))) break;
    }
    close();
    return response;
  }
};

Connection::Connection(ConnectionOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}
Connection::~Connection() = default;

const ConnectionOptions& Connection::options() const { return impl_->opts; }

Result<Response> Connection::roundTrip(const Request& request, milliseconds timeout) {
  return impl_->roundTrip(request, timeout);
}

Result<Response> Connection::stream(const Request& request, milliseconds headTimeout,
                                    milliseconds idleTimeout, const BodySink& sink) {
  return impl_->stream(request, headTimeout, idleTimeout, sink);
}

void Connection::cancel() {
  if (impl_->cancelled.exchange(true)) return;
  Impl* impl = impl_.get();
  net::post(impl->io, [impl] { impl->closeSocket(); });
}

void Connection::close() { impl_->close(); }

}  // namespace sluice::http
