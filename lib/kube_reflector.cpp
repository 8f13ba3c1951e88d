#include "kube_reflector.h"

#include "kube_watch.h"

#include <random>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace sluice::kube {

using nlohmann::json;
using std::chrono::milliseconds;

std::pair<http::Url, size_t> ServerSet::current() const {
  std::lock_guard lock(mu_);
  return {servers_[current_], current_};
}

bool ServerSet::failover(size_t index) {
  std::lock_guard lock(mu_);
  if (servers_.size() < 2 || current_ != index) return false;
  current_ = (current_ + 1) % servers_.size();
  return true;
}

std::string queryEscape(std::string_view value) {
  std::string out;
  for (unsigned char c : value) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

namespace {

thread_local std::mt19937_64 rng{std::random_device{}()};

// A Status reply that means "your resourceVersion is unusable here": 410 Expired/Gone, or
// 504 with cause ResourceVersionTooLarge (the server is behind the RV, e.g. after failover).
bool isExpiredOrTooLarge(int httpStatus, const std::string& body) {
  if (httpStatus == 410) return true;
  json doc = json::parse(body, nullptr, false);
  if (!doc.is_object()) return false;
  ApiStatus status = decodeApiStatus(doc);
  return status.expired() || status.resourceVersionTooLarge();
}

}  // namespace

void ReflectorHandler::applySlice(const std::string&, EndpointSlice) {
  // Only called for a handler whose wantsSlices() is true, which must override this.
  spdlog::error("kubernetes: a decoded EndpointSlice event reached a handler that cannot take it");
}

Reflector::Reflector(std::shared_ptr<ServerSet> servers, std::shared_ptr<Credentials> credentials,
                     ReflectorOptions options, ReflectorHandler& handler)
    : servers_(std::move(servers)),
      credentials_(std::move(credentials)),
      options_(std::move(options)),
      handler_(handler) {}

Reflector::~Reflector() { stop(); }

void Reflector::start() {
  std::lock_guard lock(mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { run(); });
}

void Reflector::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    if (conn_) conn_->cancel();
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

ReflectorStats Reflector::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

std::string Reflector::query(bool watch, const std::string& rv, const std::string& cont,
                             long timeoutSeconds) const {
  std::string q;
  auto add = [&](std::string_view k, std::string_view v) {
    q += q.empty() ? "?" : "&";
    q += fmt::format("{}={}", k, queryEscape(v));
  };
  if (!options_.labelSelector.empty()) add("labelSelector", options_.labelSelector);
  if (!options_.fieldSelector.empty()) add("fieldSelector", options_.fieldSelector);
  if (watch) {
    add("watch", "1");
    add("allowWatchBookmarks", "true");
    add("timeoutSeconds", std::to_string(timeoutSeconds));
    add("resourceVersion", rv);
  } else {
    add("limit", std::to_string(options_.pageSize));
    if (!cont.empty()) {
      add("continue", cont);
    } else if (!rv.empty()) {
      add("resourceVersion", rv);
    }
  }
  return options_.collectionPath + q;
}

http::Connection& Reflector::newConnection(const http::Url& url) {
  http::ConnectionOptions o;
  o.url = url;
  o.tls = credentials_->tls();
  o.connectTimeout = options_.connectTimeout;
  std::lock_guard lock(mu_);
  conn_ = std::make_unique<http::Connection>(std::move(o));
  if (stopping_) conn_->cancel();
  return *conn_;
}

void Reflector::dropConnection() {
  std::lock_guard lock(mu_);
  conn_.reset();
}

bool Reflector::sleepBackoff() {
  // client-go's wait.Backoff: 800 ms × 2 up to 30 s, jitter 1.0 (sleep in [d, 2d)).
  backoff_ = backoff_.count() == 0 ? options_.backoffInitial
                                   : std::min(backoff_ * 2, options_.backoffMax);
  std::uniform_int_distribution<int64_t> jitter(0, backoff_.count());
  milliseconds delay = backoff_ + milliseconds(jitter(rng));
  std::unique_lock lock(mu_);
  wake_.wait_for(lock, delay, [this] { return stopping_; });
  return !stopping_;
}

void Reflector::noteFailure(const Status& status, size_t serverIndex, bool unreachable) {
  bool moved = unreachable && servers_->failover(serverIndex);
  std::lock_guard lock(mu_);
  ++stats_.errors;
  if (moved) ++stats_.failovers;
  if (status.code() == Code::kAborted) return;
  const bool quiet = !options_.quietNote.empty();
  const bool repeat = failing_;
  failing_ = true;
  spdlog::log(quiet && repeat ? spdlog::level::debug : spdlog::level::warn, "kubernetes {}: {}{}{}",
              options_.collectionPath, status.toString(), moved ? " (failing over to the next server)" : "",
              quiet && !repeat ? " " + options_.quietNote : "");
}

void Reflector::noteSuccess() {
  std::lock_guard lock(mu_);
  if (failing_ && !options_.quietNote.empty())
    spdlog::info("kubernetes {}: working again", options_.collectionPath);
  failing_ = false;
}

Result<http::Response> Reflector::roundTrip(const std::string& target, Outcome& outcome) {
  auto [url, index] = servers_->current();
  outcome = Outcome::kFailed;
  auto auth = credentials_->authorization();
  if (!auth) {
    noteFailure(auth.status(), index, false);
    return auth.status();
  }
  http::Request req;
  req.target = target;
  req.headers = {{"Accept", "application/json"}};
  if (!auth->empty()) req.headers.emplace_back("Authorization", *auth);
  auto& conn = newConnection(url);
  auto res = conn.roundTrip(req, options_.requestTimeout);
  dropConnection();
  if (!res) {
    noteFailure(res.status(), index, res.status().code() == Code::kUnavailable);
    return res.status();
  }
  if (res->status == 200) {
    outcome = Outcome::kEnded;
    return res;
  }
  if (res->status == 401) credentials_->invalidate();
  if (isExpiredOrTooLarge(res->status, res->body)) {
    outcome = Outcome::kExpired;
    std::lock_guard lock(mu_);
    ++stats_.expired;
  }
  Status s(res->status == 401 || res->status == 403 ? Code::kPermissionDenied : Code::kUnavailable,
           fmt::format("GET {}: HTTP {}: {}", target, res->status, res->body));
  noteFailure(s, index, false);
  return s;
}

Result<std::string> Reflector::list(const std::string& rv, Outcome& outcome) {
  std::vector<json> items;
  std::string cont;
  std::string listRv;
  for (;;) {
    auto res = roundTrip(query(false, rv, cont, 0), outcome);
    if (!res) {
      // An expired continue token (mid-pagination) restarts the list as a consistent read.
      if (outcome == Outcome::kExpired && !cont.empty()) {
        items.clear();
        cont.clear();
        return list("", outcome);
      }
      return res.status();
    }
    auto page = decodeList(res->body);
    if (!page) {
      outcome = Outcome::kFailed;
      return page.status().withContext("LIST " + options_.collectionPath);
    }
    listRv = page->resourceVersion;
    for (auto& item : page->items) items.push_back(std::move(item));
    cont = page->continueToken;
    if (cont.empty()) break;
  }
  handler_.replace(std::move(items));
  std::lock_guard lock(mu_);
  if (stats_.lists++ > 0) ++stats_.relists;
  return listRv;
}

Reflector::Outcome Reflector::watch(std::string& rv) {
  auto [url, index] = servers_->current();
  auto auth = credentials_->authorization();
  if (!auth) {
    noteFailure(auth.status(), index, false);
    return Outcome::kFailed;
  }
  // Spread re-watches of many nodes over time, like client-go: [min, 2×min).
  std::uniform_int_distribution<int64_t> spread(0, options_.minWatchTimeout.count());
  long timeoutSeconds = std::max<long>(
      1, static_cast<long>((options_.minWatchTimeout.count() + spread(rng)) / 1000));
  http::Request req;
  req.target = query(true, rv, "", timeoutSeconds);
  req.headers = {{"Accept", "application/json"}};
  if (!auth->empty()) req.headers.emplace_back("Authorization", *auth);
  {
    std::lock_guard lock(mu_);
    ++stats_.watches;
  }

  Outcome outcome = Outcome::kEnded;
  uint64_t delivered = 0;
  auto onEvent = [&](WatchEvent& ev) -> bool {
    switch (ev.type) {
      case WatchEventType::kBookmark: {
        if (!ev.resourceVersion.empty()) rv = ev.resourceVersion;
        ++delivered;
        std::lock_guard lock(mu_);
        ++stats_.bookmarks;
        return true;
      }
      case WatchEventType::kAdded:
      case WatchEventType::kModified:
      case WatchEventType::kDeleted: {
        if (ev.slice) {
          handler_.applySlice(watchEventTypeName(ev.type), std::move(*ev.slice));
        } else {
          handler_.apply(watchEventTypeName(ev.type), ev.object);
        }
        if (!ev.resourceVersion.empty()) rv = ev.resourceVersion;
        ++delivered;
        std::lock_guard lock(mu_);
        ++stats_.events;
        return true;
      }
      case WatchEventType::kError:
        break;
    }
    if (ev.error && ev.error->expired()) {
      outcome = Outcome::kExpired;
      std::lock_guard lock(mu_);
      ++stats_.expired;
      return false;
    }
    noteFailure(Status(Code::kUnavailable, "watch " + options_.collectionPath + ": " +
                                               (ev.error ? ev.error->toString() : "ERROR event")),
                index, false);
    outcome = Outcome::kFailed;
    return false;
  };
  // Chunk boundaries are not event boundaries: the decoder buffers partial events.
  WatchStreamDecoder decoder(64u << 20, handler_.wantsSlices() ? WatchObjects::kEndpointSlices
                                                                : WatchObjects::kJson);
  std::vector<WatchEvent> events;
  auto consume = [&](const Status& decoded) -> bool {
    for (auto& ev : events)
      if (!onEvent(ev)) return false;
    events.clear();
    if (!decoded) {
      noteFailure(decoded.withContext("watch " + options_.collectionPath), index, false);
      outcome = Outcome::kFailed;
      return false;
    }
    return true;
  };
  auto sink = [&](std::string_view bytes) -> bool { return consume(decoder.feed(bytes, events)); };

  auto began = std::chrono::steady_clock::now();
  auto& conn = newConnection(url);
  auto res = conn.stream(req, options_.requestTimeout, options_.lease, sink);
  dropConnection();
  if (!res) {
    bool silent = res.status().message().find("idle timeout") != std::string::npos;
    if (silent) {
      std::lock_guard lock(mu_);
      ++stats_.leaseExpiries;
    }
    noteFailure(res.status(), index, res.status().code() == Code::kUnavailable);
    return silent ? Outcome::kLeaseExpired : Outcome::kFailed;
  }
  if (res->status != 200) {
    if (res->status == 401) credentials_->invalidate();
    bool expired = isExpiredOrTooLarge(res->status, res->body);
    if (expired) {
      std::lock_guard lock(mu_);
      ++stats_.expired;
    }
    noteFailure(Status(Code::kUnavailable, fmt::format("watch {}: HTTP {}: {}",
                                                       options_.collectionPath, res->status, res->body)),
                index, false);
    return expired ? Outcome::kExpired : Outcome::kFailed;
  }
  if (outcome == Outcome::kEnded) consume(decoder.finish(events));
  if (outcome == Outcome::kEnded && delivered == 0 &&
      std::chrono::steady_clock::now() - began < std::chrono::seconds(1)) {
    // client-go: a watch that closes at once without a single event is an error (avoids a
    // hot loop against a server that accepts and hangs up).
    noteFailure(Status(Code::kUnavailable, "watch closed at once without events"), index, false);
    return Outcome::kFailed;
  }
  return outcome;
}

void Reflector::run() {
  std::string listRv;  // "" = consistent read
  auto stopping = [this] {
    std::lock_guard lock(mu_);
    return stopping_;
  };
  while (!stopping()) {
    Outcome outcome = Outcome::kFailed;
    auto listed = list(listRv, outcome);
    if (!listed) {
      if (stopping()) return;
      // client-go's fallback: an Expired/TooLarge relist is retried as a consistent read.
      if (outcome == Outcome::kExpired && !listRv.empty()) {
        listRv.clear();
        continue;
      }
      if (!sleepBackoff()) return;
      continue;
    }
    backoff_ = milliseconds(0);
    noteSuccess();
    std::string rv = *listed;
    for (;;) {
      size_t serverBefore = servers_->current().second;
      Outcome w = watch(rv);
      if (stopping()) return;
      if (w == Outcome::kEnded) {
        backoff_ = milliseconds(0);
        continue;
      }
      listRv = rv;
      if (w == Outcome::kFailed) {
        if (!sleepBackoff()) return;
        // Same server: re-watch from the last RV. Another server: its RVs may differ, relist.
        if (servers_->current().second == serverBefore) continue;
      } else if (w == Outcome::kLeaseExpired) {
        if (!sleepBackoff()) return;
      }
      break;  // relist
    }
  }
}

}  // namespace sluice::kube
