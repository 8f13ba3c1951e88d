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
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "kube_decode.h"
#include "read_file.h"

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

// Splits a YAML file (or a JSON stream of several objects) into documents.
Result<std::vector<json>> parseYamlDocuments(std::string_view text, const std::string& fileName) {
  std::vector<json> docs;
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

// kind: List, or a typed list (ServiceList) whose items carry no kind of their own.
bool isListKind(const std::string& kind) { return endsWith(kind, "List"); }
std::string listItemKind(const std::string& listKind) {
  return listKind == "List" ? "" : listKind.substr(0, listKind.size() - 4);
}

// Item j of document i's `items`; its own kind wins over the list's.
Status addListItem(const json& item, const std::string& itemKind, size_t i, size_t j, const std::string& fileName,
                   ManifestSet& set) {
  std::string at = fmt::format("document {} items[{}]", i, j);
  if (!item.is_object()) return syntaxError(fileName, at + ": not a mapping");
  std::string k = kindOf(item);
  if (k.empty()) k = itemKind;
  if (k.empty()) return syntaxError(fileName, at + ": no kind");
  addObject(item, k, fmt::format("{} {}", fileName, at), set);
  return Status::ok();
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

// One document: a single object, or a List whose items are objects.
Status addDocument(const json& doc, size_t i, const std::string& fileName, ManifestSet& set) {
  if (doc.is_null()) return Status::ok();  // empty document ("---" at the end)
  if (!doc.is_object()) return syntaxError(fileName, fmt::format("document {}: not a mapping", i));
  std::string kind = kindOf(doc);
  if (kind.empty()) return syntaxError(fileName, fmt::format("document {}: no kind", i));
  if (!isListKind(kind)) {
    addObject(doc, kind, fmt::format("{} document {}", fileName, i), set);
    return Status::ok();
  }
  auto items = doc.find("items");
  if (items == doc.end() || items->is_null()) return Status::ok();
  if (!items->is_array()) return syntaxError(fileName, fmt::format("document {}: items: not a list", i));
  for (size_t j = 0; j < items->size(); ++j)
    if (Status st = addListItem((*items)[j], listItemKind(kind), i, j, fileName, set); !st) return st;
  return Status::ok();
}

// A JSON file of one document, decoded while it is parsed: each item of a top-level `items`
// array is decoded as soon as its closing brace is read and then dropped from the DOM, so a
// 10 000-Service List never exists as one JSON tree (it would be ~150 MB; one item is ~1 KB).
// Only the shape kubectl writes takes this path; anything unusual — an item that is not an
// object, a kindless item before the List's own kind was read, a repeated "items" or "kind"
// key, a top-level kind that turns out not to be a List — makes the caller parse the whole
// DOM as before (nullopt), so results and errors are those of addDocument().
class JsonListStream {
 public:
  JsonListStream(const std::string& fileName, ManifestSet& set) : fileName_(fileName), set_(set) {}

  // nullopt: not decodable item by item (or not JSON at all); the caller falls back.
  std::optional<Status> run(std::string_view text) {
    json rest = json::parse(
        text.begin(), text.end(),
        [this](int depth, json::parse_event_t event, json& parsed) { return onEvent(depth, event, parsed); },
        false);
    if (rest.is_discarded() || !streaming_) return std::nullopt;
    if (!items_) return addDocument(rest, 0, fileName_, set_);  // no items array: as usual
    if (!isListKind(kindOf(rest))) return std::nullopt;  // "items" of something that is no List
    if (!error_.isOk()) return error_;
    return addDocument(rest, 0, fileName_, set_);  // its items are gone: checks kind and the rest
  }

 private:
  bool onEvent(int depth, json::parse_event_t event, json& parsed) {
    using E = json::parse_event_t;
    if (!streaming_) return true;
    if (depth == 0) {
      if (event != E::object_start && event != E::object_end) streaming_ = false;  // not a mapping
    } else if (depth == 1) {
      if (event == E::key) {
        key_ = parsed.get<std::string>();
        if ((key_ == "items" && sawItems_) || (key_ == "kind" && sawKind_)) streaming_ = false;
        sawItems_ |= key_ == "items";
      } else if (event == E::value && key_ == "kind") {
        sawKind_ = true;
        if (parsed.is_string()) kind_ = parsed.get<std::string>();
      } else if (event == E::array_start && key_ == "items") {
        inItems_ = items_ = true;
      } else if (event == E::array_end) {
        inItems_ = false;
      }
    } else if (depth == 2 && inItems_) {
      if (event == E::object_end) return takeItem(parsed);
      if (event == E::value || event == E::array_end) streaming_ = false;  // an item that is no object
    }
    return true;
  }

  // Decodes one item and drops it from the DOM (false). The first error stops decoding; it is
  // returned only if the whole text turns out to be valid JSON (a JSON syntax error wins).
  bool takeItem(const json& item) {
    const size_t j = next_++;
    if (!error_.isOk()) return false;
    if ((kindOf(item).empty() && !sawKind_) || (sawKind_ && !isListKind(kind_))) {
      streaming_ = false;  // a typed list's item before the List's kind, or no List at all
      return true;
    }
    error_ = addListItem(item, listItemKind(kind_), 0, j, fileName_, set_);
    return false;
  }

  const std::string& fileName_;
  ManifestSet& set_;
  bool streaming_ = true;
  std::string key_;   // the last key of the top-level object
  std::string kind_;  // its "kind", once read
  bool sawKind_ = false;
  bool sawItems_ = false;
  bool items_ = false;    // an "items" array was opened
  bool inItems_ = false;  // and is being read
  size_t next_ = 0;
  Status error_ = Status::ok();
};

}  // namespace

Result<ManifestSet> parseManifests(std::string_view text, const std::string& fileName) {
  ManifestSet set;
  std::vector<json> docs;
  if (endsWith(fileName, ".json")) {
    // The common case, one JSON document, goes through nlohmann (exact numbers), item by item.
    if (auto st = JsonListStream(fileName, set).run(text)) {
      if (!*st) return *st;
      dropDuplicates(set);
      return set;
    }
    set = ManifestSet{};
    json doc = json::parse(text.begin(), text.end(), nullptr, false);
    if (!doc.is_discarded()) docs.push_back(std::move(doc));
  }
  // kubectl also takes a stream of several JSON objects; JSON is YAML, so such a file falls
  // through to the YAML reader, which then also reports any syntax error with its line and
  // column.
  if (docs.empty()) {
    auto parsed = parseYamlDocuments(text, fileName);
    if (!parsed) return parsed.status();
    docs = std::move(parsed).value();
  }
  for (size_t i = 0; i < docs.size(); ++i)
    if (Status st = addDocument(docs[i], i, fileName, set); !st) return st;
  dropDuplicates(set);
  return set;
}

namespace {

struct ManifestFile {
  std::string name;
  std::string text;
};
using Digest = std::array<unsigned char, 32>;

// The file, or every *.yaml/*.yml/*.json file of the directory in name order, read whole.
Result<std::vector<ManifestFile>> readManifestFiles(const std::string& path) {
  std::error_code ec;
  std::vector<fs::path> names;
  if (fs::is_directory(path, ec)) {
    for (const auto& entry : fs::directory_iterator(path, ec))
      if (entry.is_regular_file(ec) && isManifestName(entry.path().filename().string()))
        names.push_back(entry.path());
    if (ec) return Status(Code::kUnavailable, fmt::format("{}: {}", path, ec.message()));
    std::sort(names.begin(), names.end());
  } else {
    names.push_back(path);
  }
  std::vector<ManifestFile> files;
  for (const auto& name : names) {
    auto text = readFile(name.string());
    if (!text) return text.status();
    files.push_back({name.string(), std::move(text).value()});
  }
  return files;
}

Result<ManifestSet> parseManifestFiles(const std::vector<ManifestFile>& files) {
  ManifestSet all;
  for (const auto& f : files) {
    auto set = parseManifests(f.text, f.name);
    if (!set) return set.status();
    for (auto& s : set->services) all.services.push_back(std::move(s));
    for (auto& s : set->slices) all.slices.push_back(std::move(s));
    for (auto& p : set->problems) all.problems.push_back(std::move(p));
  }
  dropDuplicates(all);
  return all;
}

// SHA-256 over every file's name, length and bytes: equal digests, equal manifests.
Digest digestOf(const std::vector<ManifestFile>& files) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  for (const auto& f : files) {
    const uint64_t sizes[2] = {f.name.size(), f.text.size()};
    EVP_DigestUpdate(ctx.get(), sizes, sizeof sizes);
    EVP_DigestUpdate(ctx.get(), f.name.data(), f.name.size());
    EVP_DigestUpdate(ctx.get(), f.text.data(), f.text.size());
  }
  Digest d{};
  EVP_DigestFinal_ex(ctx.get(), d.data(), nullptr);
  return d;
}

}  // namespace

Result<ManifestSet> loadManifests(const std::string& path) {
  auto files = readManifestFiles(path);
  if (!files) return files.status();
  return parseManifestFiles(*files);
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

  // What was last delivered, as a digest of the files it was read from: a reload of the same
  // bytes delivers nothing. Not a copy of the objects: at 10 000 Services that copy cost as
  // much memory as the store's own (about 22 MB).
  std::optional<Digest> delivered;
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
    auto files = readManifestFiles(options.path);
    if (!files) return rejected(files.status());
    const Digest digest = digestOf(*files);
    if (digest == delivered) {  // e.g. touched, or back to the last good state after an error
      syntaxErrorGone();
      return Status::ok();
    }
    auto set = parseManifestFiles(*files);
    files->clear();  // the texts are not needed any more
    if (!set) return rejected(set.status());
    syntaxErrorGone();
    std::set<std::string> nowBad;
    for (auto& p : set->problems) {
      nowBad.insert(p.object);
      if (!problemObjects.count(p.object)) spdlog::warn("{}: {}", sourceName(), p.toString());
      sink->problem(p);
    }
    for (const auto& o : problemObjects)
      if (!nowBad.count(o)) sink->problemCleared(o);
    problemObjects = std::move(nowBad);
    // Both kinds go out even if only one changed; the store finds the unchanged objects equal
    // and does not mark them dirty.
    delivered = digest;
    sink->replaceServices(std::move(set->services));
    sink->replaceSlices(std::move(set->slices));
    return Status::ok();
  }

  // Keep the last good state of everything; say what is wrong once per distinct error.
  Status rejected(Status st) {
    if (st.message() != lastSyntaxError) {
      lastSyntaxError = st.message();
      spdlog::warn("{}: {}; keeping the last good state", sourceName(), lastSyntaxError);
      sink->problem({sourceName(), "", lastSyntaxError});
    }
    return st;
  }

  void syntaxErrorGone() {
    if (lastSyntaxError.empty()) return;
    lastSyntaxError.clear();
    sink->problemCleared(sourceName());
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
