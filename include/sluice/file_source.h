// sluice/file_source.h — Services and EndpointSlices from Kubernetes manifests on disk.
//
// The embedded default source: a YAML or JSON file (several documents, `kind: List` and typed
// lists like ServiceList allowed) or a directory of *.yaml, *.yml and *.json files, holding
// Services, EndpointSlices and legacy v1 Endpoints exactly as `kubectl apply -f` takes them.
// Other kinds are ignored. The source re-reads on change (inotify on the directory, so editors
// that write a temp file and rename it over the original are seen; debounced, so a file
// written in pieces is read once it is complete).
//
// Error contract: a syntax error anywhere (YAML/JSON, a document that is not an object or has
// no kind) keeps the last good state of everything and is reported through
// StateSink::problem naming the file and document index; an object the decoder rejects is
// skipped and reported while everything else applies.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/model.h"
#include "sluice/source.h"
#include "sluice/status.h"

namespace sluice {

// What a set of manifests holds. `problems` are the objects that were skipped.
struct ManifestSet {
  std::vector<Service> services;
  std::vector<EndpointSlice> slices;
  std::vector<Problem> problems;
};

// Parses one file's text. `fileName` picks the syntax (".json" → JSON, else YAML; JSON is
// valid YAML too) and names the file in errors. A syntax error is InvalidArgument
// "<file>: document N: ..."; a rejected object is a Problem in the result.
Result<ManifestSet> parseManifests(std::string_view text, const std::string& fileName);
// Reads a file, or every *.yaml/*.yml/*.json file of a directory in name order (hidden files
// and editors' backups skipped). Unreadable path or any syntax error → error, nothing else.
Result<ManifestSet> loadManifests(const std::string& path);

struct FileSourceOptions {
  std::string path;  // a manifest file or a directory of them
  // Quiet time after the last change before re-reading.
  std::chrono::milliseconds debounce{200};
};

class FileSource : public Source {
 public:
  explicit FileSource(FileSourceOptions options);
  ~FileSource() override;  // stops
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;

  std::string name() const override;  // "file:<path>"
  // Loads once (a missing path or a syntax error is returned: a daemon must not start on a
  // broken config), delivers it, marks both kinds synced, then watches for changes.
  Status start(StateSink& sink) override;
  void stop() override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice
