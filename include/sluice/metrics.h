// sluice/metrics.h — counters, gauges and histograms with labels, exposed in the Prometheus
// text format 0.0.4.
//
// A Registry owns metric families; a family hands out one child per combination of label
// values (created at first use, never removed unless the family is cleared). Updating a child
// is lock-free (atomics); only creating a child takes the family's lock, so hot paths should
// keep the reference they got. expose() renders every family, sorted by name, children sorted
// by label values, with # HELP and # TYPE lines and the format's escaping.
//
// Misuse that can only be a programming error (a metric name that is not a valid Prometheus
// name, the same name registered twice with another type, the wrong number of label values)
// throws std::logic_error at wiring time; nothing here throws once the wiring is done.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace sluice::metrics {

using LabelValues = std::vector<std::string>;

class Counter {
 public:
  void inc(double by = 1);  // `by` < 0 is ignored: counters never go down
  // Mirrors a counter kept elsewhere (a kernel counter read at scrape time).
  void set(double value) { value_.store(value); }
  double value() const { return value_.load(); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void set(double value) { value_.store(value); }
  void add(double by);
  void inc() { add(1); }
  void dec() { add(-1); }
  double value() const { return value_.load(); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  // `upperBounds` sorted ascending, without +Inf (implied).
  explicit Histogram(std::vector<double> upperBounds);
  void observe(double value);

  struct Snapshot {
    std::vector<double> upperBounds;
    std::vector<uint64_t> cumulativeCounts;  // one per bound
    uint64_t count = 0;
    double sum = 0;
  };
  Snapshot snapshot() const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // per bucket, not cumulative
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0};
};

// Bucket layouts as Prometheus' client libraries define them.
std::vector<double> exponentialBuckets(double start, double factor, int count);
std::vector<double> linearBuckets(double start, double width, int count);

enum class Type { kCounter, kGauge, kHistogram };

class FamilyBase {
 public:
  FamilyBase(std::string name, std::string help, Type type, std::vector<std::string> labelNames);
  virtual ~FamilyBase() = default;
  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  Type type() const { return type_; }
  const std::vector<std::string>& labelNames() const { return labelNames_; }
  // Appends this family in the text format.
  virtual void render(std::string& out) const = 0;

 protected:
  void checkArity(const LabelValues& values) const;
  std::string labelText(const LabelValues& values, const char* extraName = nullptr,
                        const std::string& extraValue = {}) const;
  void renderHeader(std::string& out) const;
  void renderChild(std::string& out, const LabelValues& values, const Counter& c) const;
  void renderChild(std::string& out, const LabelValues& values, const Gauge& g) const;
  void renderChild(std::string& out, const LabelValues& values, const Histogram& h) const;

  std::string name_;
  std::string help_;
  Type type_;
  std::vector<std::string> labelNames_;
};

template <typename M>
class Family : public FamilyBase {
 public:
  using Factory = std::function<std::unique_ptr<M>()>;
  Family(std::string name, std::string help, Type type, std::vector<std::string> labelNames, Factory factory)
      : FamilyBase(std::move(name), std::move(help), type, std::move(labelNames)),
        factory_(std::move(factory)) {}

  // The child for `values` (in labelNames() order); the reference stays valid until clear().
  M& with(const LabelValues& values) {
    checkArity(values);
    std::lock_guard lock(mu_);
    auto& slot = children_[values];
    if (!slot) slot = factory_();
    return *slot;
  }
  // The only child of a family without labels.
  M& get() { return with({}); }
  // Forgets every child (for label sets that come and go, e.g. per-CPU counters).
  void clear() {
    std::lock_guard lock(mu_);
    children_.clear();
  }
  void render(std::string& out) const override;

 private:
  Factory factory_;
  mutable std::mutex mu_;
  std::map<LabelValues, std::unique_ptr<M>> children_;
};

// render() is defined in metrics.cpp for these three.
extern template class Family<Counter>;
extern template class Family<Gauge>;
extern template class Family<Histogram>;

class Registry {
 public:
  Family<Counter>& counter(const std::string& name, const std::string& help,
                           std::vector<std::string> labelNames = {});
  Family<Gauge>& gauge(const std::string& name, const std::string& help,
                       std::vector<std::string> labelNames = {});
  Family<Histogram>& histogram(const std::string& name, const std::string& help,
                               std::vector<double> upperBounds, std::vector<std::string> labelNames = {});

  // Runs before every expose(): refreshes values that are read rather than counted (kernel
  // counters, sizes of live structures).
  void onCollect(std::function<void()> hook);

  // Every family in the text format 0.0.4.
  std::string expose() const;
  static constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

 private:
  FamilyBase& add(std::unique_ptr<FamilyBase> family);

  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<FamilyBase>> families_;
  std::vector<std::function<void()>> hooks_;
};

// Text-format helpers (exposed for tests and for other exporters).
std::string escapeHelp(const std::string& text);        // \ and newline
std::string escapeLabelValue(const std::string& text);  // \ " and newline
std::string formatValue(double value);                   // shortest round-trip; +Inf, -Inf, NaN
bool validMetricName(const std::string& name);
bool validLabelName(const std::string& name);

}  // namespace sluice::metrics
