// file_source.cpp — manifests on disk → StateSink, reloaded on change.
#include "sluice/file_source.h"

#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "kube_decode.h"

namespace sluice {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// Converting YAML expands aliases; a few anchors can name an exponential tree ("billion
// laughs"). Manifests are small, so a generous cap on converted nodes and nesting is safe.
// Bytes count too: one long scalar behind an alias repeated a million times is 64 GB of JSON.
constexpr size_t kMaxYamlNodes = 1'000'000;
constexpr size_t kMaxYamlBytes = 64u << 20;
constexpr int kMaxYamlDepth = 200;

bool isYamlNull(const std::string& s) { return s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL"; }

// A plain (unquoted) scalar resolved by YAML 1.2's core schema, as sigs.k8s.io/yaml reads
// manifests for the cases that matter here: 80 is a number, "80" and None are strings.
json plainScalar(const std::string& s) {
  if (isYamlNull(s)) return nullptr;
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  const char* b = s.data();
  const char* e = s.data() + s.size();
  const bool negative = *b == '-';
  const char* digits = (*b == '-' || *b == '+') ? b + 1 : b;
  if (digits < e) {
    int base = 10;
    const char* start = digits;
    if (e - digits > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'o')) {
      base = digits[1] == 'x' ? 16 : 8;
      start = digits + 2;
    }
    uint64_t u = 0;
    auto [p, ec] = std::from_chars(start, e, u, base);
    if (ec == std::errc() && p == e) {
      if (!negative && u <= uint64_t(INT64_MAX)) return int64_t(u);
      if (!negative) return u;
      if (u <= uint64_t(INT64_MAX)) return -int64_t(u);
      if (u == uint64_t(INT64_MAX) + 1) return INT64_MIN;
    }
    // Floats: digits, one dot, an exponent; never "inf"/"nan" words (those stay strings).
    bool floaty = std::all_of(digits, e, [](char c) {
      return (c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+';
    }) && std::any_of(digits, e, [](char c) { return c >= '0' && c <= '9'; });
    if (floaty) {
      double d = 0;
      auto [p, ec] = std::from_chars(*b == '+' ? b + 1 : b, e, d);
      if (ec == std::errc() && p == e) return d;
    }
  }
  return s;
}

// Builds JSON straight from yaml-cpp's parser events (no YAML::Node tree in between).
// Driving the parser ourselves is also how a yaml-cpp 0.7 bug is kept out: on input such as
// `{"a":1},x` its LoadAll() loops forever, appending a null document per turn without consuming
// a token (fixed upstream in yaml-cpp PR #1319, not in Debian 12's 0.7.0). A document that
// starts where the previous one started is that loop, and is reported as a syntax error.
class JsonBuilder final : public YAML::EventHandler {
 public:
  struct Failure {
    YAML::Mark mark;
    std::string what;
  };

  json takeDocument() { return std::move(document_); }
  const YAML::Mark& documentStart() const { return start_; }
  // The first problem in the document just parsed. Events after it are ignored; it is reported
  // only if the parser itself finds nothing (its own error describes a broken file better:
  // on `{"a": 1,` it still emits a null key before it notices the missing brace).
  const std::optional<Failure>& failure() const { return failure_; }

  void OnDocumentStart(const YAML::Mark& mark) override {
    start_ = mark;
    document_ = nullptr;
    stack_.clear();
    anchors_.clear();  // anchors are scoped to their document
  }
  void OnDocumentEnd() override {}

  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    add(mark, json(nullptr), anchor, Counts{1, 0}, nullptr);
  }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    if (failure_) return;
    auto it = anchors_.find(anchor);
    if (it == anchors_.end()) return fail(mark, "alias to an unknown anchor");
    const Anchored& a = it->second;
    add(mark, a.value, 0, a.counts, a.keyText ? &*a.keyText : nullptr);
  }
  void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                const std::string& text) override {
    if (failure_) return;
    // "!" marks a quoted scalar, which is always a string; plain ones resolve by the core schema.
    json v = (tag == "!" || tag == "tag:yaml.org,2002:str") ? json(text) : plainScalar(text);
    add(mark, std::move(v), anchor, Counts{1, text.size()}, &text);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    open(mark, json::array(), anchor);
  }
  void OnSequenceEnd() override { close(); }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    open(mark, json::object(), anchor);
  }
  void OnMapEnd() override { close(); }

 private:
  struct Counts {
    size_t nodes = 0;
    size_t bytes = 0;
  };
  struct Frame {
    json value;
    YAML::Mark mark;
    YAML::anchor_t anchor = 0;
    Counts counts{1, 0};
    std::optional<std::string> key;  // a mapping's key waiting for its value
  };
  struct Anchored {
    json value;
    Counts counts;
    std::optional<std::string> keyText;  // scalars only: usable as a mapping key
  };

  void fail(const YAML::Mark& mark, std::string what) {
    if (!failure_) failure_ = Failure{mark, std::move(what)};
  }

  void open(const YAML::Mark& mark, json empty, YAML::anchor_t anchor) {
    if (failure_) return;
    if (stack_.size() >= size_t(kMaxYamlDepth)) return fail(mark, "YAML nested too deeply");
    if (!stack_.empty() && stack_.back().value.is_object() && !stack_.back().key)
      return fail(mark, "a mapping key is not a scalar");
    if (!charge(mark, Counts{1, 0})) return;
    stack_.push_back(Frame{std::move(empty), mark, anchor, Counts{1, 0}, std::nullopt});
  }

  void close() {
    if (failure_) return;
    Frame f = std::move(stack_.back());
    stack_.pop_back();
    if (f.anchor) anchors_[f.anchor] = Anchored{f.value, f.counts, std::nullopt};
    place(f.mark, std::move(f.value), f.counts, nullptr);
  }

  void add(const YAML::Mark& mark, json v, YAML::anchor_t anchor, Counts c, const std::string* keyText) {
    if (failure_ || !charge(mark, c)) return;
    if (anchor) anchors_[anchor] = Anchored{v, c, keyText ? std::optional<std::string>(*keyText) : std::nullopt};
    place(mark, std::move(v), c, keyText);
  }

  // Puts a finished value into its parent: the next item of a list, a key, or a key's value.
  void place(const YAML::Mark& mark, json v, Counts c, const std::string* keyText) {
    if (stack_.empty()) {
      document_ = std::move(v);
      return;
    }
    Frame& parent = stack_.back();
    parent.counts.nodes += c.nodes;
    parent.counts.bytes += c.bytes;
    if (parent.value.is_array()) {
      parent.value.push_back(std::move(v));
    } else if (!parent.key) {
      if (!keyText || v.is_null()) return fail(mark, "a mapping key is not a scalar");
      parent.key = *keyText;
    } else {
      parent.value[*parent.key] = std::move(v);
      parent.key.reset();
    }
  }

  // Aliases expand: a few anchors can name an exponential tree ("billion laughs"). Counting
  // what each anchor holds refuses the expansion before it is built.
  bool charge(const YAML::Mark& mark, Counts c) {
    total_.nodes += c.nodes;
    total_.bytes += c.bytes;
    if (total_.nodes > kMaxYamlNodes) fail(mark, "too many YAML nodes (alias expansion?)");
    if (total_.bytes > kMaxYamlBytes) fail(mark, "YAML expands to too many bytes (alias expansion?)");
    return !failure_;
  }

  YAML::Mark start_;
  json document_;
  std::vector<Frame> stack_;
  std::map<YAML::anchor_t, Anchored> anchors_;
  Counts total_;
  std::optional<Failure> failure_;
};

bool endsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool isManifestName(const std::string& name) {
  if (name.empty() || name[0] == '.') return false;  // hidden, editors' swap files
  return endsWith(name, ".yaml") || endsWith(name, ".yml") || endsWith(name, ".json");
}

Status syntaxError(const std::string& file, std::string what) {
  return Status(Code::kInvalidArgument, fmt::format("{}: {}", file, what));
}

// Splits the file into documents (JSON values or YAML documents).
Result<std::vector<json>> parseDocuments(std::string_view text, const std::string& fileName) {
  std::vector<json> docs;
  if (endsWith(fileName, ".json")) {
    // The common case, one JSON document, goes through nlohmann (exact numbers). kubectl also
    // takes a stream of several JSON objects; JSON is YAML, so such a file falls through to
    // the YAML reader, which then also reports any syntax error with its line and column.
    json doc = json::parse(text.begin(), text.end(), nullptr, false);
    if (!doc.is_discarded()) {
      docs.push_back(std::move(doc));
      return docs;
    }
  }
  std::istringstream in{std::string(text)};
  JsonBuilder builder;
  try {
    YAML::Parser parser(in);
    std::optional<int> lastStart;
    while (parser.HandleNextDocument(builder)) {
      const YAML::Mark& at = builder.documentStart();
      if (lastStart == at.pos)  // the LoadAll loop described at JsonBuilder
        return syntaxError(fileName, fmt::format("line {} column {}: unexpected token",
                                                 at.line + 1, at.column + 1));
      lastStart = at.pos;
      if (const auto& f = builder.failure())
        return syntaxError(fileName, fmt::format("document {} line {} column {}: {}", docs.size(),
                                                 f->mark.line + 1, f->mark.column + 1, f->what));
      docs.push_back(builder.takeDocument());
    }
  } catch (const YAML::Exception& e) {
    return syntaxError(fileName, fmt::format("line {} column {}: {}", e.mark.line + 1,
                                             e.mark.column + 1, e.msg));
  }
  return docs;
}

void addObject(const json& obj, const std::string& kind, const std::string& where, ManifestSet& out) {
  auto locate = [&](Problem p) {
    p.reason += fmt::format(" ({})", where);
    out.problems.push_back(std::move(p));
  };
  if (kind == "Service") {
    auto d = kube::decodeService(obj);
    if (d) out.services.push_back(std::move(*d.value));
    else locate(std::move(*d.error));
  } else if (kind == "EndpointSlice") {
    auto d = kube::decodeEndpointSlice(obj);
    if (d) out.slices.push_back(std::move(*d.value));
    else if (d.error->field == "addressType" && d.error->reason.find("FQDN") != std::string::npos)
      return;  // FQDN slices are legal, just not for a proxy
    else locate(std::move(*d.error));
  } else if (kind == "Endpoints") {
    auto d = kube::decodeEndpoints(obj);
    if (d) for (auto& s : *d.value) out.slices.push_back(std::move(s));
    else locate(std::move(*d.error));
  }
  // Any other kind (Deployments next to their Service...) is not ours.
}

std::string kindOf(const json& obj) {
  auto it = obj.find("kind");
  return it != obj.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// Later definitions of the same object replace earlier ones, as a second `kubectl apply`
// would; the duplicate is reported so the user notices.
void dropDuplicates(ManifestSet& set) {
  auto dedupe = [&](auto& items, const char* kind) {
    std::map<ObjectName, size_t> last;
    for (size_t i = 0; i < items.size(); ++i) last[items[i].id] = i;
    if (last.size() == items.size()) return;
    std::remove_reference_t<decltype(items)> kept;
    for (size_t i = 0; i < items.size(); ++i) {
      if (last[items[i].id] == i) kept.push_back(std::move(items[i]));
      else set.problems.push_back({fmt::format("{} {}", kind, items[i].id.toString()), "",
                                   "defined more than once; the last definition wins"});
    }
    items = std::move(kept);
  };
  dedupe(set.services, "Service");
  dedupe(set.slices, "EndpointSlice");
}

}  // namespace

Result<ManifestSet> parseManifests(std::string_view text, const std::string& fileName) {
  auto docs = parseDocuments(text, fileName);
  if (!docs) return docs.status();
  ManifestSet set;
  for (size_t i = 0; i < docs->size(); ++i) {
    const json& doc = (*docs)[i];
    if (doc.is_null()) continue;  // empty document ("---" at the end)
    std::string where = fmt::format("{} document {}", fileName, i);
    if (!doc.is_object()) return syntaxError(fileName, fmt::format("document {}: not a mapping", i));
    std::string kind = kindOf(doc);
    if (kind.empty()) return syntaxError(fileName, fmt::format("document {}: no kind", i));
    if (!endsWith(kind, "List")) {
      addObject(doc, kind, where, set);
      continue;
    }
    // kind: List, or a typed list (ServiceList) whose items carry no kind of their own.
    std::string itemKind = kind == "List" ? "" : kind.substr(0, kind.size() - 4);
    auto items = doc.find("items");
    if (items == doc.end() || items->is_null()) continue;
    if (!items->is_array()) return syntaxError(fileName, fmt::format("document {}: items: not a list", i));
    for (size_t j = 0; j < items->size(); ++j) {
      const json& item = (*items)[j];
      std::string at = fmt::format("document {} items[{}]", i, j);
      if (!item.is_object()) return syntaxError(fileName, at + ": not a mapping");
      std::string k = kindOf(item);
      if (k.empty()) k = itemKind;
      if (k.empty()) return syntaxError(fileName, at + ": no kind");
      addObject(item, k, fmt::format("{} {}", fileName, at), set);
    }
  }
  dropDuplicates(set);
  return set;
}

Result<ManifestSet> loadManifests(const std::string& path) {
  std::error_code ec;
  std::vector<fs::path> files;
  if (fs::is_directory(path, ec)) {
    for (const auto& entry : fs::directory_iterator(path, ec))
      if (entry.is_regular_file(ec) && isManifestName(entry.path().filename().string()))
        files.push_back(entry.path());
    if (ec) return Status(Code::kUnavailable, fmt::format("{}: {}", path, ec.message()));
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  ManifestSet all;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) return Status::fromErrno(errno, fmt::format("cannot read {}", f.string()));
    std::ostringstream text;
    text << in.rdbuf();
    auto set = parseManifests(text.str(), f.string());
    if (!set) return set.status();
    for (auto& s : set->services) all.services.push_back(std::move(s));
    for (auto& s : set->slices) all.slices.push_back(std::move(s));
    for (auto& p : set->problems) all.problems.push_back(std::move(p));
  }
  dropDuplicates(all);
  return all;
}

// --- FileSource -------------------------------------------------------------------------------

struct FileSource::Impl {
  FileSourceOptions options;
  StateSink* sink = nullptr;
  std::thread thread;
  int inotifyFd = -1;
  int stopFd = -1;
  std::mutex mu;  // start/stop
  bool running = false;

  // What was last delivered, to skip reloads that change nothing.
  std::vector<Service> services;
  std::vector<EndpointSlice> slices;
  std::set<std::string> problemObjects;
  std::string lastSyntaxError;

  std::string watchedDir() const {
    std::error_code ec;
    if (fs::is_directory(options.path, ec)) return options.path;
    auto parent = fs::path(options.path).parent_path();
    return parent.empty() ? "." : parent.string();
  }
  // A changed name in the watched directory that concerns us.
  bool relevant(std::string_view name) const {
    // A Kubernetes ConfigMap/Secret volume updates by pointing the symlink "..data" at a new
    // hidden directory (rename over); the visible names are symlinks through it.
    if (name == "..data") return true;
    std::error_code ec;
    if (fs::is_directory(options.path, ec)) return isManifestName(std::string(name));
    return fs::path(options.path).filename() == fs::path(name);
  }

  std::string sourceName() const { return "file:" + options.path; }

  Status reload() {
    auto set = loadManifests(options.path);
    if (!set) {
      // Keep the last good state of everything; say what is wrong once per distinct error.
      if (set.status().message() != lastSyntaxError) {
        lastSyntaxError = set.status().message();
        spdlog::warn("{}: {}; keeping the last good state", sourceName(), lastSyntaxError);
        sink->problem({sourceName(), "", lastSyntaxError});
      }
      return set.status();
    }
    if (!lastSyntaxError.empty()) {
      lastSyntaxError.clear();
      sink->problemCleared(sourceName());
    }
    std::set<std::string> nowBad;
    for (auto& p : set->problems) {
      nowBad.insert(p.object);
      if (!problemObjects.count(p.object)) spdlog::warn("{}: {}", sourceName(), p.toString());
      sink->problem(p);
    }
    for (const auto& o : problemObjects)
      if (!nowBad.count(o)) sink->problemCleared(o);
    problemObjects = std::move(nowBad);
    if (set->services != services) {
      services = set->services;
      sink->replaceServices(std::move(set->services));
    }
    if (set->slices != slices) {
      slices = set->slices;
      sink->replaceSlices(std::move(set->slices));
    }
    return Status::ok();
  }

  void run() {
    using Clock = std::chrono::steady_clock;
    bool pending = false;  // a change was seen; re-read at `due`
    Clock::time_point due{};
    alignas(inotify_event) char buf[16 * 1024];
    for (;;) {
      int timeout = -1;
      if (pending) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(due - Clock::now()).count();
        timeout = left < 0 ? 0 : static_cast<int>(left);
      }
      pollfd fds[2] = {{stopFd, POLLIN, 0}, {inotifyFd, POLLIN, 0}};
      int n = ::poll(fds, 2, timeout);
      if (n < 0 && errno != EINTR) {
        spdlog::error("{}: poll: {}", sourceName(), strerror(errno));
        return;
      }
      if (fds[0].revents) return;
      if (n > 0 && fds[1].revents) {
        ssize_t len = ::read(inotifyFd, buf, sizeof buf);
        bool changed = false;
        for (ssize_t off = 0; len > 0 && off < len;) {
          auto* ev = reinterpret_cast<inotify_event*>(buf + off);
          // IN_Q_OVERFLOW: events were lost, so re-read to be safe.
          if ((ev->mask & IN_Q_OVERFLOW) || (ev->len > 0 && relevant(ev->name))) changed = true;
          off += sizeof(inotify_event) + ev->len;
        }
        // Every change restarts the quiet period: a file written in pieces is read once.
        if (changed) {
          pending = true;
          due = Clock::now() + options.debounce;
        }
        continue;
      }
      if (pending && Clock::now() >= due) {
        pending = false;
        (void)reload();  // failures are reported through the sink and retried on next change
      }
    }
  }
};

FileSource::FileSource(FileSourceOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
}

FileSource::~FileSource() { stop(); }

std::string FileSource::name() const { return impl_->sourceName(); }

Status FileSource::start(StateSink& sink) {
  std::lock_guard lock(impl_->mu);
  if (impl_->running) return Status(Code::kFailedPrecondition, name() + ": already started");
  auto& im = *impl_;
  im.sink = &sink;
  std::error_code ec;
  if (!fs::exists(im.options.path, ec))
    return Status(Code::kNotFound, fmt::format("{}: no such file or directory", im.options.path));
  // Watch before the first read, so a change between the two is not missed.
  im.inotifyFd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (im.inotifyFd < 0) return Status::fromErrno(errno, "inotify_init1");
  const uint32_t mask = IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE |
                        IN_DELETE | IN_ATTRIB;
  if (::inotify_add_watch(im.inotifyFd, im.watchedDir().c_str(), mask) < 0) {
    Status s = Status::fromErrno(errno, "inotify_add_watch " + im.watchedDir());
    ::close(im.inotifyFd);
    im.inotifyFd = -1;
    return s;
  }
  im.stopFd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (Status s = im.reload(); !s.isOk()) {
    ::close(im.inotifyFd);
    if (im.stopFd >= 0) ::close(im.stopFd);
    im.inotifyFd = im.stopFd = -1;
    return s;
  }
  sink.synced(ResourceKind::kService);
  sink.synced(ResourceKind::kEndpointSlice);
  im.running = true;
  im.thread = std::thread([&im] { im.run(); });
  return Status::ok();
}

void FileSource::stop() {
  std::lock_guard lock(impl_->mu);
  auto& im = *impl_;
  if (!im.running) return;
  uint64_t one = 1;
  (void)!::write(im.stopFd, &one, sizeof one);
  im.thread.join();
  ::close(im.inotifyFd);
  ::close(im.stopFd);
  im.inotifyFd = im.stopFd = -1;
  im.running = false;
}

}  // namespace sluice
