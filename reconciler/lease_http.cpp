// The lease API over HTTP: routes for a LeaseStore, and HttpLeaseStore, its client.
#include "sluice/lease_http.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lease_json.h"
#include "sluice/http_client.h"

namespace sluice {
namespace {

using json = nlohmann::json;
constexpr std::string_view kPrefix = "/v1/leases";

HttpResponse errorReply(int status, const std::string& message) {
  return HttpResponse::json(status, json{{"error", message}}.dump());
}

HttpResponse statusReply(const Status& s) {
  int code = 503;
  if (s.code() == Code::kInvalidArgument) code = 400;
  if (s.code() == Code::kNotFound) code = 404;
  return errorReply(code, s.message());
}

// The query parameter `key`, "" when absent (identities and ids need no decoding).
std::string queryParam(const std::string& query, const std::string& key) {
  size_t pos = 0;
  while (pos <= query.size()) {
    size_t end = query.find('&', pos);
    if (end == std::string::npos) end = query.size();
    const std::string item = query.substr(pos, end - pos);
    if (item.rfind(key + "=", 0) == 0) return item.substr(key.size() + 1);
    pos = end + 1;
  }
  return "";
}

std::optional<int64_t> parseInt(const std::string& s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  for (char c : s)
    if (c < '0' || c > '9') return std::nullopt;
  return std::stoll(s);
}

HttpResponse handle(LeaseStore& store, const HttpRequest& req) {
  const std::string& path = req.path;
  if (path == kPrefix) {
    if (req.method != "GET") return errorReply(405, "use GET to list");
    auto listing = store.list();
    if (!listing) return statusReply(listing.status());
    json leases = json::array();
    for (const LeaseRecord& r : listing->leases) {
      json j = leasejson::encode(r.spec, r.generation, r.renewTime);
      j["leaseId"] = r.leaseId;
      leases.push_back(std::move(j));
    }
    return HttpResponse::json(200, json{{"revision", listing->revision}, {"leases", leases}}.dump());
  }
  if (path.rfind(std::string(kPrefix) + "/", 0) != 0) return errorReply(404, "no such route");
  std::string identity = path.substr(kPrefix.size() + 1);
  bool renew = false;
  if (identity.size() > 6 && identity.compare(identity.size() - 6, 6, "/renew") == 0) {
    identity.resize(identity.size() - 6);
    renew = true;
  }
  if (identity.empty() || identity.find('/') != std::string::npos) return errorReply(404, "no such route");

  if (renew && req.method == "POST") {
    json body = json::parse(req.body, nullptr, false);
    if (!body.is_object() || !body.contains("leaseId") || !body["leaseId"].is_number_integer())
      return errorReply(400, "body must be {\"leaseId\": N, \"renewTimeMs\": T}");
    LeaseHandle h{identity, body["leaseId"].get<int64_t>(), 0, {}};
    const int64_t ms = body.value("renewTimeMs", int64_t{0});
    if (Status s = store.renew(h, leasejson::fromWallMillis(ms)); !s) return statusReply(s);
    return HttpResponse::json(200, json{{"generation", h.generation}}.dump());
  }
  if (!renew && req.method == "PUT") {
    json body = json::parse(req.body, nullptr, false);
    if (body.is_object() && !body.contains("identity")) body["identity"] = identity;
    Problem problem{"lease " + identity, "", ""};
    auto rec = leasejson::decode(body, problem);
    if (!rec) return errorReply(400, rec.status().message());
    if (rec->spec.identity != identity) return errorReply(400, "identity in the body differs from the path");
    auto h = store.acquire(rec->spec, rec->renewTime);
    if (!h) return statusReply(h.status());
    return HttpResponse::json(200, json{{"identity", h->identity},
                                        {"leaseId", h->leaseId},
                                        {"generation", h->generation},
                                        {"ttlMs", h->ttl.count()}}
                                       .dump());
  }
  if (!renew && req.method == "DELETE") {
    auto id = parseInt(queryParam(req.query, "lease"));
    if (!id) return errorReply(400, "?lease=<leaseId> is required");
    if (Status s = store.release({identity, *id, 0, {}}); !s) return statusReply(s);
    return HttpResponse::json(200, "{}");
  }
  return errorReply(405, "method not allowed here");
}

}  // namespace

Status serveLeaseApi(HttpServer& server, LeaseStore& store, const std::string& bearerToken) {
  if (bearerToken.empty()) return {Code::kInvalidArgument, "the lease API needs a bearer token"};
  HttpRouteOptions auth{bearerToken};
  auto handler = [&store](const HttpRequest& req) { return handle(store, req); };
  server.route("GET", std::string(kPrefix), handler, auth);
  // Paths carry the identity: the catch-all route, dispatched by handle().
  for (const char* method : {"GET", "PUT", "POST", "DELETE"}) server.route(method, "*", handler, auth);
  return Status::ok();
}

// ---------------------------------------------------------------------------------------------

struct HttpLeaseStore::Impl {
  HttpLeaseStoreConfig cfg;
  http::Url url;

  // One request on a connection of its own (calls may come from several threads).
  Result<json> call(const std::string& method, const std::string& target, const json& body,
                    const std::string& what) {
    http::ConnectionOptions o;
    o.url = url;
    o.connectTimeout = cfg.requestTimeout;
    http::Connection conn(std::move(o));
    http::Request req;
    req.method = method;
    req.target = target;
    req.headers = {{"Authorization", "Bearer " + cfg.token}, {"Accept", "application/json"}};
    if (!body.is_null()) req.body = body.dump();
    auto res = conn.roundTrip(req, cfg.requestTimeout);
    if (!res) return res.status().withContext(what);
    json doc = json::parse(res->body, nullptr, false);
    if (res->status == 200 && doc.is_object()) return doc;
    const std::string message = fmt::format("{}: HTTP {}: {}", what, res->status,
                                            doc.is_object() ? doc.value("error", res->body) : res->body);
    Code code = Code::kUnavailable;
    if (res->status == 400) code = Code::kInvalidArgument;
    if (res->status == 401 || res->status == 403) code = Code::kPermissionDenied;
    if (res->status == 404) code = Code::kNotFound;
    return Status(code, message);
  }
};

Result<std::unique_ptr<HttpLeaseStore>> HttpLeaseStore::create(HttpLeaseStoreConfig config) {
  auto url = http::parseUrl(config.url);
  if (!url) return url.status().withContext("lease API URL");
  auto impl = std::make_unique<Impl>();
  impl->cfg = std::move(config);
  impl->url = *url;
  return std::unique_ptr<HttpLeaseStore>(new HttpLeaseStore(std::move(impl)));
}

HttpLeaseStore::HttpLeaseStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpLeaseStore::~HttpLeaseStore() = default;

std::string HttpLeaseStore::name() const { return "http:" + impl_->url.toString(); }

Result<LeaseHandle> HttpLeaseStore::acquire(const LeaseSpec& spec, Clock::WallTime renewTime) {
  if (Status s = validateLeaseSpec(spec); !s) return s;
  auto r = impl_->call("PUT", std::string(kPrefix) + "/" + spec.identity, leasejson::encode(spec, 1, renewTime),
                       "acquiring lease " + spec.identity);
  if (!r) return r.status();
  try {
    return LeaseHandle{spec.identity, r->at("leaseId").get<int64_t>(), r->at("generation").get<uint64_t>(),
                       std::chrono::milliseconds(r->at("ttlMs").get<int64_t>())};
  } catch (const json::exception& e) {
    return Status(Code::kUnavailable, std::string("acquiring lease: malformed answer: ") + e.what());
  }
}

Status HttpLeaseStore::renew(LeaseHandle& handle, Clock::WallTime renewTime) {
  auto r = impl_->call("POST", std::string(kPrefix) + "/" + handle.identity + "/renew",
                       {{"leaseId", handle.leaseId}, {"renewTimeMs", leasejson::wallMillis(renewTime)}},
                       "renewing lease " + handle.identity);
  if (!r) return r.status();
  handle.generation = r->value("generation", handle.generation);
  return Status::ok();
}

Status HttpLeaseStore::release(const LeaseHandle& handle) {
  auto r = impl_->call("DELETE", fmt::format("{}/{}?lease={}", kPrefix, handle.identity, handle.leaseId), nullptr,
                       "releasing lease " + handle.identity);
  return r ? Status::ok() : r.status();
}

Result<LeaseListing> HttpLeaseStore::list() {
  auto r = impl_->call("GET", std::string(kPrefix), nullptr, "listing leases");
  if (!r) return r.status();
  LeaseListing out;
  out.revision = r->value("revision", int64_t{0});
  const json leases = r->value("leases", json::array());
  for (const json& j : leases.is_array() ? leases : json::array()) {
    if (!j.is_object()) continue;
    Problem problem{"lease " + j.value("identity", std::string("?")), "", ""};
    auto rec = leasejson::decode(j, problem);
    if (!rec) {
      out.errors.push_back({j.value("identity", std::string()), problem});
      continue;
    }
    rec->leaseId = j.value("leaseId", int64_t{0});
    out.leases.push_back(std::move(*rec));
  }
  return out;
}

}  // namespace sluice
