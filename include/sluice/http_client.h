// sluice/http_client.h — a small blocking HTTP/1.1 client over TCP or TLS (Boost.Beast inside).
//
// Generic on purpose: the Kubernetes watch, the etcd JSON gateway and the daemon's probes use it.
// One Connection is one socket (reopened on demand); a long-running stream (a watch) gets a
// connection of its own, as HTTP/1.1 cannot multiplex. Every blocking call has a deadline, and
// cancel() (from any thread) ends the call in progress, so an owner can always stop a thread
// that sits in a read. TCP keepalive is on for every socket, so a peer that vanished without a
// FIN is noticed even by a stream whose read deadline is long.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sluice/status.h"

namespace sluice::http {

// scheme://host[:port][/base/path]. Only http and https; host may be a bracketed IPv6
// literal. No userinfo, query or fragment (none is meaningful for an API server URL).
struct Url {
  std::string scheme;    // "http" / "https"
  std::string host;      // without brackets: "10.0.0.1", "::1", "api.example"
  uint16_t port = 0;     // defaulted from the scheme when absent
  std::string basePath;  // "" or "/prefix" (no trailing slash)
  bool tls() const { return scheme == "https"; }
  std::string hostHeader() const;  // "host:port", IPv6 bracketed
  std::string toString() const;    // canonical form
};
Result<Url> parseUrl(std::string_view text);
bool isIpLiteral(std::string_view host);

struct TlsConfig {
  // Trust: PEM bundle from a file or from memory; neither = the system default paths.
  std::string caFile;
  std::string caData;
  // Client certificate and key (PEM), from files or from memory.
  std::string certFile;
  std::string certData;
  std::string keyFile;
  std::string keyData;
  // Name used for SNI and certificate verification instead of the URL's host.
  std::string serverName;
  // Skips certificate verification entirely. Only honoured when set explicitly.
  bool insecureSkipVerify = false;
};

using Header = std::pair<std::string, std::string>;

struct Request {
  std::string method = "GET";
  std::string target;  // path + query, appended to the URL's basePath
  std::vector<Header> headers;
  std::string body;  // sent with Content-Type from headers (default application/json) if set
};

struct Response {
  int status = 0;
  std::vector<Header> headers;
  std::string body;  // whole body (roundTrip) or the body of a non-2xx stream reply
  // First header named `name` (case-insensitive), "" when absent.
  std::string header(std::string_view name) const;
};

struct ConnectionOptions {
  Url url;
  TlsConfig tls;
  std::chrono::milliseconds connectTimeout{10000};  // TCP connect + TLS handshake
  // TCP keepalive: first probe after `keepAliveIdle`, then every `keepAliveInterval`,
  // `keepAliveCount` unanswered probes close the socket. TCP_USER_TIMEOUT is set to the same
  // total so unacknowledged writes to a vanished peer fail as soon.
  std::chrono::seconds keepAliveIdle{15};
  std::chrono::seconds keepAliveInterval{5};
  int keepAliveCount = 3;
};

// Called with body bytes as they arrive. Return false to stop reading (the connection is then
// closed, the stream call returns OK).
using BodySink = std::function<bool(std::string_view bytes)>;

class Connection {
 public:
  explicit Connection(ConnectionOptions options);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  const ConnectionOptions& options() const;

  // Sends `request` and reads the whole response within `timeout`. Opens the socket if needed
  // and keeps it open when the server allows. Errors: Unavailable (connect, TLS, I/O, timeout —
  // message says which), Aborted (cancelled). HTTP error statuses are not errors here.
  Result<Response> roundTrip(const Request& request, std::chrono::milliseconds timeout);

  // Sends `request`, waits at most `headTimeout` for the response head, then hands 2xx body
  // bytes to `sink` as they arrive (chunked or not), each read waiting at most `idleTimeout`.
  // Returns the response (body empty for 2xx) when the body ends, or an error: Unavailable
  // with "idle timeout" when no byte came within `idleTimeout`, Aborted when cancelled. A
  // non-2xx reply's body is read whole into Response::body instead of the sink. The socket is
  // closed afterwards (a stream is never reused).
  Result<Response> stream(const Request& request, std::chrono::milliseconds headTimeout,
                          std::chrono::milliseconds idleTimeout, const BodySink& sink);

  // Thread-safe and idempotent: aborts the call in progress (and every later call) with Aborted.
  void cancel();
  // Closes the socket; the next call reconnects.
  void close();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice::http
