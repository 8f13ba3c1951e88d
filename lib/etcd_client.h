// etcd_client.h (private) — a small client for etcd v3's gRPC-JSON gateway (etcd 3.4, /v3/...),
// over sluice's HTTP client (http or https, client certificates): what the lease store needs
// and nothing more.
//
// Wire facts (docs: /work/shared/spec/kubernetes-api.md §4, captured bodies in fixtures/etcd):
// every RPC is a POST with a JSON body; keys and values are standard base64; 64-bit integers
// come back as JSON strings; proto3 defaults are omitted (no `kvs` when empty, no `type` for a
// PUT event, no `TTL` for a lease that is gone); errors are {"error","message","code"} with the
// gRPC code and an HTTP status mapped from it; bodies are chunked and end with a trailer.
//
// One connection per call (loopback or LAN etcd: the handshake is cheap next to a raft write,
// and calls from different threads never wait for each other). A Watch holds its own
// connection and reads the streaming response as it arrives.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "sluice/http_client.h"
#include "sluice/status.h"

namespace sluice::etcd {

// "https://10.0.0.1:2379", "http://127.0.0.1:2379" or "127.0.0.1:2379" (http). The port is
// required: etcd has no scheme default.
Result<http::Url> parseEndpoint(std::string_view url);

std::string base64Encode(std::string_view raw);
Result<std::string> base64Decode(std::string_view b64);
// The range_end that makes [prefix, end) the keys starting with `prefix`.
std::string prefixEnd(std::string_view prefix);

// int64 fields arrive as strings ("15") but are accepted as numbers too; absent → 0.
int64_t intField(const nlohmann::json& obj, const char* name);

// A gateway error body / HTTP status → Status: gRPC NotFound (5) → kNotFound, OutOfRange (11,
// "required revision has been compacted") → kAborted, Unavailable (14) and 5xx → kUnavailable.
Status statusFromReply(int httpStatus, std::string_view body, std::string_view what);

struct KeyValue {
  std::string key;
  std::string value;
  int64_t createRevision = 0;
  int64_t modRevision = 0;
  int64_t version = 0;
  int64_t lease = 0;
};
Result<KeyValue> decodeKeyValue(const nlohmann::json& kv);

struct WatchEvent {
  bool isDelete = false;  // PUT events carry no "type"
  KeyValue kv;
};

// One `{"result":{...}}` line of a watch stream.
struct WatchMessage {
  bool created = false;
  bool canceled = false;
  int64_t compactRevision = 0;  // set with canceled when the start revision was compacted
  int64_t headerRevision = 0;
  std::string cancelReason;
  std::vector<WatchEvent> events;
};
Result<WatchMessage> decodeWatchLine(std::string_view line);

struct Grant {
  int64_t id = 0;
  int64_t ttlSeconds = 0;  // as granted (the server may raise it to its minimum)
};
struct RangeResult {
  std::vector<KeyValue> kvs;
  int64_t revision = 0;  // header.revision: the store revision the range reflects
};

class Client {
 public:
  // `server.url` names etcd; its TLS settings apply to https. `timeout` bounds every call.
  Client(http::ConnectionOptions server, std::chrono::milliseconds timeout)
      : server_(std::move(server)), timeout_(timeout) {}

  // POST `target` with `body`; the parsed reply, or the mapped error. kUnavailable when the
  // server cannot be reached or does not answer within the timeout.
  Result<nlohmann::json> call(const std::string& target, const nlohmann::json& body) const;

  Result<Grant> grant(int64_t ttlSeconds) const;
  // Remaining TTL after the keepalive; kNotFound when the lease is gone (reply without TTL).
  Result<int64_t> keepAlive(int64_t id) const;
  Status put(const std::string& key, const std::string& value, int64_t lease) const;
  Result<RangeResult> rangePrefix(const std::string& prefix) const;
  // kNotFound when the lease is unknown.
  Status revoke(int64_t id) const;
  Status compact(int64_t revision) const;

  const http::Url& url() const { return server_.url; }

 private:
  http::ConnectionOptions server_;
  std::chrono::milliseconds timeout_;
};

// A watch over a key prefix from a start revision, read as a stream until it ends, fails or is
// cancelled. run() blocks; cancel() may be called from any thread, also before run().
class Watch {
 public:
  // `timeout` bounds connecting and the response head; the stream itself may stay quiet (the
  // watch asks for progress notifications, which etcd sends every 10 minutes by default).
  Watch(http::ConnectionOptions server, std::chrono::milliseconds timeout)
      : server_(std::move(server)), timeout_(timeout) {}

  // Calls onMessage for every line; returning false ends the watch. Returns ok when ended by
  // onMessage or cancel(), kUnavailable when the connection failed or closed, or the mapped
  // error of a non-200 reply.
  Status run(const std::string& prefix, int64_t startRevision,
             const std::function<bool(const WatchMessage&)>& onMessage);
  void cancel();

 private:
  http::ConnectionOptions server_;
  std::chrono::milliseconds timeout_;
  std::mutex mu_;
  bool cancelled_ = false;
  http::Connection* running_ = nullptr;  // the stream in progress, to cancel it (guarded by mu_)
};

}  // namespace sluice::etcd
