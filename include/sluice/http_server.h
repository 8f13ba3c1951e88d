// sluice/http_server.h — a small HTTP/1.1 server for health checks, metrics and status pages.
//
// Built on Boost.Beast + Asio, served from the server's own thread(s): a node agent embeds it
// without giving up its main loop. Routes are exact (method, path) pairs; GET routes answer
// HEAD too. Every connection has a read deadline, an idle keep-alive deadline and size limits
// for the header and the body, so a slow or hostile client costs one socket and nothing more.
// The listening socket can be created inside another network namespace (see netns.h), which
// is how health-check node ports are served on a node namespace in tests and demos.
//
// Thread safety: route() before start(); handlers run on the server's threads and must be
// thread-safe when `threads` > 1. start()/stop() from one controlling thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sluice/status.h"

namespace sluice {

struct HttpRequest {
  std::string method;  // "GET"
  std::string target;  // "/metrics?x=1"
  std::string path;    // "/metrics"
  std::string query;   // "x=1"
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
  std::string remote;  // "127.0.0.1:54321"

  // Header value by lower-case name, "" if absent.
  std::string header(const std::string& lowerName) const;
};

struct HttpResponse {
  int status = 200;
  std::string contentType = "text/plain; charset=utf-8";
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers
  std::string body;

  static HttpResponse text(int status, std::string body);
  static HttpResponse json(int status, std::string body);
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

struct HttpRouteOptions {
  // When set, requests must carry "Authorization: Bearer <token>"; others get 401.
  std::string bearerToken;
};

struct HttpServerOptions {
  // Literal IPv4 or IPv6 address ("127.0.0.1", "::1", "0.0.0.0", "::"); no host names.
  std::string address = "127.0.0.1";
  uint16_t port = 0;  // 0 = any free port; port() tells which one
  // Network namespace the listening socket is created in: "" (the caller's), a name under
  // /run/netns, a path, or a PID. Accepted connections live in the same namespace.
  std::string netns;
  unsigned threads = 1;
  size_t maxHeaderBytes = 16 * 1024;  // larger → 431
  size_t maxBodyBytes = 64 * 1024;    // larger → 413
  size_t maxConnections = 128;        // further connections are closed at once
  // A request must arrive completely within this time after it started (or after the
  // previous response on a kept-alive connection), else the connection is closed.
  std::chrono::milliseconds requestTimeout{10000};
  // A kept-alive connection with no new request for this long is closed.
  std::chrono::milliseconds idleTimeout{60000};
  // A response must be written within this time.
  std::chrono::milliseconds writeTimeout{10000};
  std::string serverName = "sluice";
};

// "HOST:PORT", "[V6]:PORT" or ":PORT" (= all IPv4 addresses, as Go's net.Listen reads it).
// Fails with kInvalidArgument naming what is wrong.
Status parseHostPort(const std::string& text, std::string* host, uint16_t* port);

class HttpServer {
 public:
  explicit HttpServer(HttpServerOptions options);
  ~HttpServer();  // stops
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Registers a handler for (method, path). `path` "*" matches any path not otherwise routed
  // (health-check node ports answer on every path, as kube-proxy's do). Call before start().
  void route(const std::string& method, const std::string& path, HttpHandler handler,
             HttpRouteOptions options = {});

  // Binds, listens and starts serving on the server's threads. Fails (kAlreadyExists for
  // EADDRINUSE, kInvalidArgument for a bad address, …) without leaving anything running.
  // Starting a started server fails with kFailedPrecondition.
  Status start();
  // Stops accepting, closes every connection and joins the threads. Idempotent; the server
  // can be started again afterwards.
  void stop();

  bool running() const;
  // The bound port (useful with port 0); 0 when not running.
  uint16_t port() const;
  const HttpServerOptions& options() const { return options_; }
  // "127.0.0.1:10256" / "[::1]:10256" of the bound socket; "" when not running.
  std::string boundAddress() const;

  struct Impl;  // opaque; public only so the connection code in http_server.cpp can name it

 private:
  HttpServerOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice
