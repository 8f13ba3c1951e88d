// etcd v3 gateway client over Boost.Beast. Every operation runs on a private io_context: the
// async calls carry the timeouts (beast::tcp_stream), run() drives them one at a time.
#include "etcd_client.h"

#include <openssl/evp.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>

namespace sluice::etcd {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;

// Runs the pending async work of `ioc` to completion.
void drive(asio::io_context& ioc) {
  ioc.restart();
  ioc.run();
}

Status connectStream(asio::io_context& ioc, beast::tcp_stream& stream, const Endpoint& ep,
                     std::chrono::milliseconds timeout, const std::function<void()>& run) {
  tcp::resolver resolver(ioc);
  beast::error_code ec;
  auto results = resolver.resolve(ep.host, std::to_string(ep.port), ec);
  if (ec) return {Code::kUnavailable, "resolving " + ep.toString() + ": " + ec.message()};
  stream.expires_after(timeout);
  beast::error_code connectEc = asio::error::would_block;
  stream.async_connect(results, [&](beast::error_code e, const tcp::endpoint&) { connectEc = e; });
  run();
  if (connectEc) return {Code::kUnavailable, "connecting to " + ep.toString() + ": " + connectEc.message()};
  return Status::ok();
}

http::request<http::string_body> postRequest(const Endpoint& ep, const std::string& target, std::string body) {
  http::request<http::string_body> req{http::verb::post, target, 11};
  req.set(http::field::host, ep.toString());
  req.set(http::field::content_type, "application/json");
  req.body() = std::move(body);
  req.prepare_payload();
  return req;
}

}  // namespace

std::string Endpoint::toString() const { return host + ":" + std::to_string(port); }

Result<Endpoint> parseEndpoint(std::string_view url) {
  if (url.rfind("https://", 0) == 0) return Status(Code::kUnimplemented, "etcd over TLS is not supported yet");
  if (url.rfind("http://", 0) == 0) url.remove_prefix(7);
  while (!url.empty() && url.back() == '/') url.remove_suffix(1);
  const auto colon = url.rfind(':');
  if (colon == std::string_view::npos || colon == 0)
    return Status(Code::kInvalidArgument, "etcd endpoint \"" + std::string(url) + "\": want host:port");
  Endpoint ep;
  ep.host = std::string(url.substr(0, colon));
  unsigned long port = 0;
  try {
    size_t used = 0;
    port = std::stoul(std::string(url.substr(colon + 1)), &used);
    if (used != url.size() - colon - 1) port = 0;
  } catch (const std::exception&) {
    port = 0;
  }
  if (port == 0 || port > 65535)
    return Status(Code::kInvalidArgument, "etcd endpoint \"" + std::string(url) + "\": bad port");
  ep.port = static_cast<uint16_t>(port);
  return ep;
}

std::string base64Encode(std::string_view raw) {
  std::string out(4 * ((raw.size() + 2) / 3), '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(raw.data()), static_cast<int>(raw.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

Result<std::string> base64Decode(std::string_view b64) {
  if (b64.size() % 4 != 0) return Status(Code::kInvalidArgument, "base64 length not a multiple of 4");
  std::string out(b64.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(b64.data()), static_cast<int>(b64.size()));
  if (n < 0) return Status(Code::kInvalidArgument, "not base64");
  // EVP_DecodeBlock counts the padding as zero bytes; drop them.
  size_t pad = 0;
  if (!b64.empty() && b64.back() == '=') pad = (b64.size() >= 2 && b64[b64.size() - 2] == '=') ? 2 : 1;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

std::string prefixEnd(std::string_view prefix) {
  std::string end(prefix);
  // Increment the last byte that is not 0xff, dropping the 0xff bytes after it.
  while (!end.empty()) {
    auto& c = reinterpret_cast<unsigned char&>(end.back());
    if (c < 0xff) {
      ++c;
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // "\0" = every key ≥ key, etcd's convention
}

int64_t intField(const json& obj, const char* name) {
  auto it = obj.find(name);
  if (it == obj.end()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_string()) {
    try {
      return std::stoll(it->get<std::string>());
    } catch (const std::exception&) {
      return 0;
    }
  }
  return 0;
}

Status statusFromReply(int httpStatus, std::string_view body, std::string_view what) {
  std::string message = std::string(body.substr(0, 200));
  int code = 0;
  try {
    json j = json::parse(body);
    if (j.is_object()) {
      message = j.value("message", j.value("error", message));
      code = static_cast<int>(intField(j, "code"));
    }
  } catch (const json::exception&) {
  }
  const std::string text = fmt::format("{}: HTTP {}: {}", what, httpStatus, message);
  if (code == 5 || (code == 0 && httpStatus == 404)) return {Code::kNotFound, text};
  if (code == 11) return {Code::kAborted, text};
  if (code == 14 || httpStatus >= 500) return {Code::kUnavailable, text};
  if (code == 3) return {Code::kInvalidArgument, text};
  return {Code::kInternal, text};
}

Result<KeyValue> decodeKeyValue(const json& kv) {
  if (!kv.is_object()) return Status(Code::kInvalidArgument, "kv is not an object");
  KeyValue out;
  auto key = base64Decode(kv.value("key", ""));
  if (!key) return key.status().withContext("kv.key");
  auto value = base64Decode(kv.value("value", ""));
  if (!value) return value.status().withContext("kv.value");
  out.key = std::move(key).value();
  out.value = std::move(value).value();
  out.createRevision = intField(kv, "create_revision");
  out.modRevision = intField(kv, "mod_revision");
  out.version = intField(kv, "version");
  out.lease = intField(kv, "lease");
  return out;
}

Result<WatchMessage> decodeWatchLine(std::string_view line) {
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception& e) {
    return Status(Code::kInvalidArgument, std::string("watch line is not JSON: ") + e.what());
  }
  if (j.contains("error")) {
    const json& e = j["error"];
    return statusFromReply(200, e.dump(), "watch");
  }
  if (!j.contains("result") || !j["result"].is_object())
    return Status(Code::kInvalidArgument, "watch line without result");
  const json& r = j["result"];
  WatchMessage m;
  m.created = r.value("created", false);
  m.canceled = r.value("canceled", false);
  m.compactRevision = intField(r, "compact_revision");
  m.cancelReason = r.value("cancel_reason", "");
  if (r.contains("header")) m.headerRevision = intField(r["header"], "revision");
  if (r.contains("events")) {
    for (const json& ev : r["events"]) {
      WatchEvent e;
      e.isDelete = ev.value("type", "PUT") == "DELETE";
      auto kv = decodeKeyValue(ev.value("kv", json::object()));
      if (!kv) return kv.status().withContext("watch event");
      e.kv = std::move(kv).value();
      m.events.push_back(std::move(e));
    }
  }
  return m;
}

// --- Client ------------------------------------------------------------------------------------

Result<json> Client::call(const std::string& target, const json& body) const {
  asio::io_context ioc;
  beast::tcp_stream stream(ioc);
  if (Status s = connectStream(ioc, stream, endpoint_, timeout_, [&] { drive(ioc); }); !s) return s;
  auto req = postRequest(endpoint_, target, body.dump());
  http::response<http::string_body> res;
  beast::flat_buffer buffer;
  beast::error_code ec = asio::error::would_block;
  stream.expires_after(timeout_);
  http::async_write(stream, req, [&](beast::error_code e, size_t) {
    ec = e;
    if (e) return;
    ec = asio::error::would_block;
    http::async_read(stream, buffer, res, [&](beast::error_code e2, size_t) { ec = e2; });
  });
  drive(ioc);
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  if (ec) return Status(Code::kUnavailable, fmt::format("etcd {}{}: {}", endpoint_.toString(), target, ec.message()));
  if (res.result_int() != 200) return statusFromReply(res.result_int(), res.body(), "etcd " + target);
  try {
    // Streaming RPCs called one-shot (keepalive) answer one `{"result":…}` line.
    json j = json::parse(res.body());
    if (j.is_object() && j.contains("result") && j.size() == 1) return j["result"];
    if (j.is_object() && j.contains("error")) return statusFromReply(200, j["error"].dump(), "etcd " + target);
    return j;
  } catch (const json::exception& e) {
    return Status(Code::kInternal, "etcd " + target + ": reply is not JSON: " + e.what());
  }
}

Result<Grant> Client::grant(int64_t ttlSeconds) const {
  auto r = call("/v3/lease/grant", {{"TTL", ttlSeconds}});
  if (!r) return r.status();
  Grant g{intField(*r, "ID"), intField(*r, "TTL")};
  if (g.id == 0) return Status(Code::kInternal, "etcd lease grant: reply without ID: " + r->dump());
  return g;
}

Result<int64_t> Client::keepAlive(int64_t id) const {
  auto r = call("/v3/lease/keepalive", {{"ID", std::to_string(id)}});
  if (!r) return r.status();
  const int64_t ttl = intField(*r, "TTL");
  if (ttl <= 0) return Status(Code::kNotFound, fmt::format("etcd lease {} is gone", id));
  return ttl;
}

Status Client::put(const std::string& key, const std::string& value, int64_t lease) const {
  json body = {{"key", base64Encode(key)}, {"value", base64Encode(value)}};
  if (lease != 0) body["lease"] = std::to_string(lease);
  return call("/v3/kv/put", body).status();
}

Result<RangeResult> Client::rangePrefix(const std::string& prefix) const {
  auto r = call("/v3/kv/range", {{"key", base64Encode(prefix)}, {"range_end", base64Encode(prefixEnd(prefix))}});
  if (!r) return r.status();
  RangeResult out;
  out.revision = intField(r->value("header", json::object()), "revision");
  for (const json& kv : r->value("kvs", json::array())) {
    auto decoded = decodeKeyValue(kv);
    if (!decoded) return decoded.status().withContext("etcd range");
    out.kvs.push_back(std::move(decoded).value());
  }
  return out;
}

Status Client::revoke(int64_t id) const { return call("/v3/lease/revoke", {{"ID", std::to_string(id)}}).status(); }

Status Client::compact(int64_t revision) const {
  return call("/v3/kv/compaction", {{"revision", std::to_string(revision)}, {"physical", true}}).status();
}

// --- Watch -------------------------------------------------------------------------------------

Status Watch::run(const std::string& prefix, int64_t startRevision,
                  const std::function<bool(const WatchMessage&)>& onMessage) {
  asio::io_context ioc;
  {
    std::lock_guard lock(mu_);
    if (cancelled_) return Status::ok();
    ioc_ = &ioc;
  }
  struct Unregister {
    Watch* w;
    ~Unregister() {
      std::lock_guard lock(w->mu_);
      w->ioc_ = nullptr;
    }
  } unregister{this};
  auto cancelled = [&] {
    std::lock_guard lock(mu_);
    return cancelled_;
  };
  // restart() under the lock: a cancel() either comes first (and nothing runs) or stops this run.
  auto driveWatch = [&] {
    {
      std::lock_guard lock(mu_);
      if (cancelled_) return;
      ioc.restart();
    }
    ioc.run();
  };

  beast::tcp_stream stream(ioc);
  if (Status s = connectStream(ioc, stream, endpoint_, connectTimeout_, driveWatch); !s)
    return cancelled() ? Status::ok() : s;
  json create = {{"key", base64Encode(prefix)},
                 {"range_end", base64Encode(prefixEnd(prefix))},
                 {"prev_kv", false},
                 {"progress_notify", true}};
  if (startRevision > 0) create["start_revision"] = std::to_string(startRevision);
  auto req = postRequest(endpoint_, "/v3/watch", json{{"create_request", create}}.dump());
  beast::error_code ec = asio::error::would_block;
  stream.expires_after(connectTimeout_);
  http::async_write(stream, req, [&](beast::error_code e, size_t) { ec = e; });
  driveWatch();
  if (cancelled()) return Status::ok();
  if (ec) return {Code::kUnavailable, "etcd watch: sending: " + ec.message()};

  http::response_parser<http::string_body> parser;
  parser.body_limit(boost::none);  // a watch streams for as long as it lives
  beast::flat_buffer buffer;
  ec = asio::error::would_block;
  http::async_read_header(stream, buffer, parser, [&](beast::error_code e, size_t) { ec = e; });
  driveWatch();
  if (cancelled()) return Status::ok();
  if (ec) return {Code::kUnavailable, "etcd watch: reading headers: " + ec.message()};
  stream.expires_never();  // an idle watch is normal

  // The body arrives as chunks holding `\n`-terminated JSON lines; a line may span chunks.
  std::string pending;
  bool keepGoing = true;
  Status failure;
  const int httpStatus = parser.get().result_int();
  auto onChunk = [&](std::uint64_t, beast::string_view data, beast::error_code&) -> std::size_t {
    pending.append(data.data(), data.size());
    if (httpStatus != 200) return data.size();
    size_t nl;
    while (keepGoing && (nl = pending.find('\n')) != std::string::npos) {
      std::string line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      if (line.find_first_not_of(" \r\t") == std::string::npos) continue;
      auto msg = decodeWatchLine(line);
      if (!msg) {
        failure = msg.status();
        keepGoing = false;
        break;
      }
      keepGoing = onMessage(*msg);
    }
    return data.size();
  };
  parser.on_chunk_body(onChunk);
  while (keepGoing && !parser.is_done()) {
    ec = asio::error::would_block;
    http::async_read_some(stream, buffer, parser, [&](beast::error_code e, size_t) { ec = e; });
    driveWatch();
    if (cancelled()) return Status::ok();
    if (ec) return {Code::kUnavailable, "etcd watch: stream: " + ec.message()};
  }
  if (httpStatus != 200)  // a chunked error body went through onChunk, a sized one to the body
    return statusFromReply(httpStatus, pending.empty() ? parser.get().body() : pending, "etcd watch");
  if (!failure) return failure;
  if (keepGoing) return {Code::kUnavailable, "etcd watch: the server ended the stream"};
  return Status::ok();
}

void Watch::cancel() {
  std::lock_guard lock(mu_);
  cancelled_ = true;
  if (ioc_) ioc_->stop();
}

}  // namespace sluice::etcd
