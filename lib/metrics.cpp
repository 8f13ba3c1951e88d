#include "sluice/metrics.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

namespace sluice::metrics {

void Counter::inc(double by) {
  if (by < 0 || std::isnan(by)) return;
  value_.fetch_add(by);
}

void Gauge::add(double by) { value_.fetch_add(by); }

Histogram::Histogram(std::vector<double> upperBounds) : bounds_(std::move(upperBounds)) {
  if (!std::is_sorted(bounds_.begin(), bounds_.end()) ||
      std::adjacent_find(bounds_.begin(), bounds_.end()) != bounds_.end())
    throw std::logic_error("histogram buckets must be strictly ascending");
  if (!bounds_.empty() && std::isinf(bounds_.back()) && bounds_.back() > 0) bounds_.pop_back();
  counts_ = std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1);
}

void Histogram::observe(double value) {
  // Bucket i counts values in (bound[i-1], bound[i]]; the last slot is (bound[n-1], +Inf).
  size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  counts_[i].fetch_add(1);
  sum_.fetch_add(value);
  count_.fetch_add(1);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.upperBounds = bounds_;
  uint64_t running = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    running += counts_[i].load();
    s.cumulativeCounts.push_back(running);
  }
  // Read from the buckets, not count_, so +Inf always equals _count even while observations
  // race with the scrape.
  s.count = running + counts_[bounds_.size()].load();
  s.sum = sum_.load();
  return s;
}

std::vector<double> exponentialBuckets(double start, double factor, int count) {
  if (start <= 0 || factor <= 1 || count < 1) throw std::logic_error("bad exponential buckets");
  std::vector<double> out;
  for (int i = 0; i < count; ++i, start *= factor) out.push_back(start);
  return out;
}

std::vector<double> linearBuckets(double start, double width, int count) {
  if (width <= 0 || count < 1) throw std::logic_error("bad linear buckets");
  std::vector<double> out;
  for (int i = 0; i < count; ++i) out.push_back(start + width * i);
  return out;
}

namespace {
// The text format escapes backslash and newline everywhere, double quotes only in label values.
std::string escapeText(const std::string& text, bool quotes) {
  std::string out;
  for (char c : text) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (quotes && c == '"') out += "\\\"";
    else out += c;
  }
  return out;
}
}  // namespace

std::string escapeHelp(const std::string& text) { return escapeText(text, false); }
std::string escapeLabelValue(const std::string& text) { return escapeText(text, true); }

std::string formatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", value);
}

namespace {
bool nameChars(const std::string& name, bool colonOk) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colonOk && c == ':') ||
              (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}
const char* typeName(Type t) {
  switch (t) {
    case Type::kCounter: return "counter";
    case Type::kGauge: return "gauge";
    case Type::kHistogram: return "histogram";
  }
  return "untyped";
}
}  // namespace

bool validMetricName(const std::string& name) { return nameChars(name, true); }
bool validLabelName(const std::string& name) {
  return nameChars(name, false) && name.rfind("__", 0) != 0;  // "__" prefix is reserved
}

FamilyBase::FamilyBase(std::string name, std::string help, Type type, std::vector<std::string> labelNames)
    : name_(std::move(name)), help_(std::move(help)), type_(type), labelNames_(std::move(labelNames)) {
  if (!validMetricName(name_)) throw std::logic_error("invalid metric name: " + name_);
  for (const auto& l : labelNames_) {
    if (!validLabelName(l) || (type_ == Type::kHistogram && l == "le"))
      throw std::logic_error(fmt::format("metric {}: invalid label name {}", name_, l));
  }
}

void FamilyBase::checkArity(const LabelValues& values) const {
  if (values.size() != labelNames_.size())
    throw std::logic_error(fmt::format("metric {}: {} label values for {} labels", name_, values.size(),
                                       labelNames_.size()));
}

std::string FamilyBase::labelText(const LabelValues& values, const char* extraName,
                                  const std::string& extraValue) const {
  if (values.empty() && !extraName) return "";
  std::string out = "{";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) out += ',';
    out += fmt::format("{}=\"{}\"", labelNames_[i], escapeLabelValue(values[i]));
  }
  if (extraName) out += fmt::format("{}{}=\"{}\"", values.empty() ? "" : ",", extraName, escapeLabelValue(extraValue));
  return out + "}";
}

void FamilyBase::renderHeader(std::string& out) const {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name_, escapeHelp(help_), name_, typeName(type_));
}

void FamilyBase::renderChild(std::string& out, const LabelValues& values, const Counter& c) const {
  out += fmt::format("{}{} {}\n", name_, labelText(values), formatValue(c.value()));
}

void FamilyBase::renderChild(std::string& out, const LabelValues& values, const Gauge& g) const {
  out += fmt::format("{}{} {}\n", name_, labelText(values), formatValue(g.value()));
}

void FamilyBase::renderChild(std::string& out, const LabelValues& values, const Histogram& h) const {
  const Histogram::Snapshot s = h.snapshot();
  for (size_t i = 0; i < s.upperBounds.size(); ++i)
    out += fmt::format("{}_bucket{} {}\n", name_, labelText(values, "le", formatValue(s.upperBounds[i])),
                       s.cumulativeCounts[i]);
  out += fmt::format("{}_bucket{} {}\n", name_, labelText(values, "le", "+Inf"), s.count);
  out += fmt::format("{}_sum{} {}\n", name_, labelText(values), formatValue(s.sum));
  out += fmt::format("{}_count{} {}\n", name_, labelText(values), s.count);
}

template <typename M>
void Family<M>::render(std::string& out) const {
  renderHeader(out);
  std::lock_guard lock(mu_);
  for (const auto& [values, child] : children_) renderChild(out, values, *child);
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

FamilyBase& Registry::add(std::unique_ptr<FamilyBase> family) {
  std::lock_guard lock(mu_);
  auto [it, fresh] = families_.emplace(family->name(), nullptr);
  if (!fresh) {
    const FamilyBase& old = *it->second;
    if (old.type() != family->type() || old.labelNames() != family->labelNames())
      throw std::logic_error("metric registered twice with another shape: " + family->name());
    return *it->second;  // same metric asked for again: share it
  }
  it->second = std::move(family);
  return *it->second;
}

Family<Counter>& Registry::counter(const std::string& name, const std::string& help,
                                   std::vector<std::string> labelNames) {
  return static_cast<Family<Counter>&>(add(std::make_unique<Family<Counter>>(
      name, help, Type::kCounter, std::move(labelNames), [] { return std::make_unique<Counter>(); })));
}

Family<Gauge>& Registry::gauge(const std::string& name, const std::string& help,
                               std::vector<std::string> labelNames) {
  return static_cast<Family<Gauge>&>(add(std::make_unique<Family<Gauge>>(
      name, help, Type::kGauge, std::move(labelNames), [] { return std::make_unique<Gauge>(); })));
}

Family<Histogram>& Registry::histogram(const std::string& name, const std::string& help,
                                       std::vector<double> upperBounds, std::vector<std::string> labelNames) {
  Histogram probe(upperBounds);  // validates the buckets now, at wiring time
  return static_cast<Family<Histogram>&>(add(std::make_unique<Family<Histogram>>(
      name, help, Type::kHistogram, std::move(labelNames),
      [b = std::move(upperBounds)] { return std::make_unique<Histogram>(b); })));
}

void Registry::onCollect(std::function<void()> hook) {
  std::lock_guard lock(mu_);
  hooks_.push_back(std::move(hook));
}

std::string Registry::expose() const {
  std::vector<std::function<void()>> hooks;
  {
    std::lock_guard lock(mu_);
    hooks = hooks_;
  }
  for (const auto& hook : hooks) hook();  // outside the lock: hooks update registered metrics
  std::string out;
  std::lock_guard lock(mu_);
  for (const auto& [name, family] : families_) family->render(out);
  return out;
}

}  // namespace sluice::metrics
