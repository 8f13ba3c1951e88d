#include "kube_rest.h"

#include <fmt/format.h>

#include "kube_watch.h"

namespace sluice::kube {

using nlohmann::json;

std::string RestReply::reason() const {
  if (!body.is_object() || body.value("kind", "") != "Status") return "";
  return decodeApiStatus(body).reason;
}

Status RestReply::toStatus(const std::string& what) const {
  Code code = Code::kUnavailable;
  if (status == 404) code = Code::kNotFound;
  if (status == 409) code = Code::kAborted;
  if (status == 401 || status == 403) code = Code::kPermissionDenied;
  if (status == 400 || status == 422) code = Code::kInvalidArgument;
  std::string detail = body.is_object() && body.value("kind", "") == "Status"
                           ? decodeApiStatus(body).toString()
                           : body.is_null() ? std::string("(no JSON body)") : body.dump();
  return {code, fmt::format("{}: HTTP {}: {}", what, status, detail)};
}

Result<std::unique_ptr<RestClient>> RestClient::create(ClientConfig config, RestOptions options) {
  if (config.servers.empty()) return Status(Code::kInvalidArgument, "kubernetes: no server URL");
  std::vector<http::Url> urls;
  for (const auto& s : config.servers) {
    auto url = http::parseUrl(s);
    if (!url) return url.status().withContext("kubernetes");
    urls.push_back(*url);
  }
  return std::unique_ptr<RestClient>(new RestClient(std::make_shared<ServerSet>(std::move(urls)),
                                                    std::make_shared<Credentials>(std::move(config)),
                                                    options));
}

RestClient::RestClient(std::shared_ptr<ServerSet> servers, std::shared_ptr<Credentials> credentials,
                       RestOptions options)
    : servers_(std::move(servers)), credentials_(std::move(credentials)), options_(options) {}

std::string RestClient::server() const { return servers_->current().first.toString(); }

Result<RestReply> RestClient::call(const std::string& method, const std::string& target, const json& body) {
  auto [url, index] = servers_->current();
  auto auth = credentials_->authorization();
  if (!auth) return auth.status();
  http::Request req;
  req.method = method;
  req.target = target;
  req.headers = {{"Accept", "application/json"}};
  if (!auth->empty()) req.headers.emplace_back("Authorization", *auth);
  if (!body.is_null()) req.body = body.dump();
  http::ConnectionOptions o;
  o.url = url;
  o.tls = credentials_->tls();
  o.connectTimeout = options_.connectTimeout;
  http::Connection conn(std::move(o));
  auto res = conn.roundTrip(req, options_.requestTimeout);
  if (!res) {
    if (res.status().code() == Code::kUnavailable) servers_->failover(index);
    return res.status().withContext(fmt::format("{} {}", method, target));
  }
  if (res->status == 401) credentials_->invalidate();
  json doc = json::parse(res->body, nullptr, false);
  return RestReply{res->status, doc.is_discarded() ? json() : std::move(doc)};
}

}  // namespace sluice::kube
