// etcd v3 gateway client over sluice's HTTP client.
#include "etcd_client.h"

#include <openssl/evp.h>

#include <fmt/format.h>

namespace sluice::etcd {
namespace {

using json = nlohmann::json;
using std::chrono::milliseconds;

http::Request postRequest(const std::string& target, std::string body) {
  http::Request req;
  req.method = "POST";
  req.target = target;
  req.body = std::move(body);  // Content-Type application/json by default
  return req;
}

}  // namespace

Result<http::Url> parseEndpoint(std::string_view text) {
  std::string url(text);
  if (url.find("://") == std::string::npos) url = "http://" + url;
  auto parsed = http::parseUrl(url);
  if (!parsed) return parsed.status().withContext(fmt::format("etcd endpoint \"{}\"", text));
  // The port must be given: etcd listens on 2379 by convention, not on the scheme's port.
  std::string_view authority = std::string_view(url).substr(url.find("://") + 3);
  authority = authority.substr(0, authority.find('/'));
  const auto bracket = authority.rfind(']');
  const auto colon = authority.rfind(':');
  if (colon == std::string_view::npos || (bracket != std::string_view::npos && colon < bracket))
    return Status(Code::kInvalidArgument, fmt::format("etcd endpoint \"{}\": want host:port", text));
  return parsed;
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
  http::Connection conn(server_);
  auto res = conn.roundTrip(postRequest(target, body.dump()), timeout_);
  if (!res) return Status(res.status().code(), fmt::format("etcd {}: {}", target, res.status().message()));
  if (res->status != 200) return statusFromReply(res->status, res->body, "etcd " + target);
  try {
    // Streaming RPCs called one-shot (keepalive) answer one `{"result":…}` line.
    json j = json::parse(res->body);
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

// How long a watch stream may stay silent before it is presumed dead. etcd sends a progress
// notification every 10 minutes (3.4's default), and TCP keepalive notices a vanished peer far
// sooner; this only bounds a server that keeps the socket up but stopped sending.
constexpr milliseconds kWatchIdleTimeout = std::chrono::hours(1);

Status Watch::run(const std::string& prefix, int64_t startRevision,
                  const std::function<bool(const WatchMessage&)>& onMessage) {
  http::Connection conn(server_);
  {
    std::lock_guard lock(mu_);
    if (cancelled_) return Status::ok();
    running_ = &conn;
  }
  struct Unregister {
    Watch* w;
    ~Unregister() {
      std::lock_guard lock(w->mu_);
      w->running_ = nullptr;
    }
  } unregister{this};

  json create = {{"key", base64Encode(prefix)},
                 {"range_end", base64Encode(prefixEnd(prefix))},
                 {"prev_kv", false},
                 {"progress_notify", true}};
  if (startRevision > 0) create["start_revision"] = std::to_string(startRevision);
  // The body arrives as `\n`-terminated JSON lines; a line may span reads.
  std::string pending;
  bool keepGoing = true;
  Status failure;
  auto sink = [&](std::string_view data) {
    pending.append(data);
    size_t start = 0, nl;
    while (keepGoing && (nl = pending.find('\n', start)) != std::string::npos) {
      std::string_view line(pending.data() + start, nl - start);
      start = nl + 1;
      if (line.find_first_not_of(" \r\t") == std::string_view::npos) continue;
      auto msg = decodeWatchLine(line);
      if (!msg) {
        failure = msg.status();
        keepGoing = false;
        break;
      }
      keepGoing = onMessage(*msg);
    }
    pending.erase(0, start);
    return keepGoing;
  };
  auto res = conn.stream(postRequest("/v3/watch", json{{"create_request", create}}.dump()), timeout_,
                         kWatchIdleTimeout, sink);
  if (res.status().code() == Code::kAborted) return Status::ok();  // cancel()
  if (!res) return Status(res.status().code(), "etcd watch: " + res.status().message());
  if (res->status != 200) return statusFromReply(res->status, res->body, "etcd watch");
  if (!failure) return failure;
  if (keepGoing) return {Code::kUnavailable, "etcd watch: the server ended the stream"};
  return Status::ok();
}

void Watch::cancel() {
  std::lock_guard lock(mu_);
  cancelled_ = true;
  if (running_) running_->cancel();
}

}  // namespace sluice::etcd
