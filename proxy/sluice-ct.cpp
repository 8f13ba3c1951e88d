// sluice-ct: conntrack and SNAT-collision diagnostics for a node (README "sluice-ct").
//
// Thin: flags and output only. Reading counters, scanning the ruleset, analysing ports and
// deleting entries are library calls (conntrack_stats.h, nat_audit.h, ct_diagnostics.h,
// conntrack.h); the lab is the testbed's runSnatLab. Every command prints text, one JSON
// document (NDJSON lines for watch) carrying "version": kJsonVersion, or Prometheus text.
//
// Exit codes: 0 ok; 1 a finding (doctor) or an exceeded threshold (watch) or a lab that
// contradicts its expectation; 2 usage or runtime error.
#include <sys/utsname.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sluice/conntrack.h"
#include "sluice/conntrack_stats.h"
#include "sluice/ct_diagnostics.h"
#include "sluice/nat_audit.h"
#include "sluice/netns.h"
#include "snat_lab.h"

namespace {

using namespace sluice;
using conntrack::Counter;
using nlohmann::json;

// Bumped only when a field changes meaning or disappears; new fields keep the version.
constexpr int kJsonVersion = 1;
constexpr int kExitOk = 0;
constexpr int kExitFinding = 1;
constexpr int kExitError = 2;

enum class Format { kText, kJson, kProm };

struct Common {
  std::string netns;
  std::string output = "text";
  Format format() const {
    if (output == "json") return Format::kJson;
    if (output == "prom") return Format::kProm;
    return Format::kText;
  }
};

std::string kernelRelease() {
  utsname u{};
  return ::uname(&u) == 0 ? u.release : "unknown";
}

json header(const Common& c, const char* command) {
  return json{{"version", kJsonVersion}, {"command", command}, {"netns", c.netns}};
}

int fail(const Common& c, const Status& s) {
  if (c.format() == Format::kJson) {
    json j = header(c, "error");
    j["error"] = {{"code", codeName(s.code())}, {"errno", s.err()}, {"message", s.message()}};
    std::cout << j.dump() << "\n";
  }
  fmt::print(stderr, "sluice-ct: {}\n", s.toString());
  return kExitError;
}

json countersJson(const conntrack::CpuCounters& c) {
  json j = json::object();
  for (Counter k : conntrack::allCounters()) {
    if (c.has(k)) j[conntrack::counterName(k)] = c.get(k);
  }
  return j;
}

json tableJson(const conntrack::Stats& s) {
  json j = json::object();
  j["entries"] = s.entries ? json(*s.entries) : json(nullptr);
  j["max"] = s.maxEntries ? json(*s.maxEntries) : json(nullptr);
  j["max_source"] = s.maxSource;
  j["fill"] = s.fill() ? json(*s.fill()) : json(nullptr);
  return j;
}

std::string promEscape(const std::string& v) {
  std::string out;
  for (char ch : v) {
    if (ch == '\\' || ch == '"') out += '\\';
    if (ch == '\n') {
      out += "\\n";
      continue;
    }
    out += ch;
  }
  return out;
}

// ---- stats ----------------------------------------------------------------------------------

int runStats(const Common& c) {
  Result<conntrack::Stats> s = conntrack::readStats(c.netns);
  if (!s) return fail(c, s.status());
  const std::string note = conntrack::insertFailedNote(s->clashResolveReported());
  switch (c.format()) {
    case Format::kJson: {
      json j = header(c, "stats");
      j["kernel"] = kernelRelease();
      j["total"] = countersJson(s->total);
      j["cpus"] = json::array();
      for (const auto& cpu : s->cpus) {
        json e = countersJson(cpu);
        e["cpu"] = cpu.cpu;
        j["cpus"].push_back(e);
      }
      j["table"] = tableJson(*s);
      j["notes"] = {{"insert_failed", note}};
      std::cout << j.dump(2) << "\n";
      break;
    }
    case Format::kProm: {
      for (Counter k : conntrack::allCounters()) {
        if (!s->total.has(k)) continue;
        const std::string name = fmt::format("sluice_conntrack_{}_total", conntrack::counterName(k));
        fmt::print("# TYPE {} counter\n", name);
        for (const auto& cpu : s->cpus) fmt::print("{}{{cpu=\"{}\"}} {}\n", name, cpu.cpu, cpu.get(k));
      }
      if (s->entries) fmt::print("# TYPE sluice_conntrack_entries gauge\nsluice_conntrack_entries {}\n", *s->entries);
      if (s->maxEntries) fmt::print("# TYPE sluice_conntrack_max gauge\nsluice_conntrack_max {}\n", *s->maxEntries);
      break;
    }
    case Format::kText: {
      fmt::print("conntrack statistics ({}; kernel {})\n",
                 c.netns.empty() ? "current network namespace" : "netns " + c.netns, kernelRelease());
      fmt::print("{:<16}{:>14}", "counter", "total");
      for (const auto& cpu : s->cpus) fmt::print("{:>12}", fmt::format("cpu{}", cpu.cpu));
      fmt::print("\n");
      for (Counter k : conntrack::allCounters()) {
        if (!s->total.has(k)) continue;
        fmt::print("{:<16}{:>14}", conntrack::counterName(k), s->total.get(k));
        for (const auto& cpu : s->cpus) fmt::print("{:>12}", cpu.get(k));
        fmt::print("\n");
      }
      fmt::print("\ntable: {} entries of max {}{}\n", s->entries ? std::to_string(*s->entries) : "?",
                 s->maxEntries ? std::to_string(*s->maxEntries) : "?",
                 s->fill() ? fmt::format(" ({:.1f}% full; max from {})", *s->fill() * 100, s->maxSource) : "");
      fmt::print("\nnote: {}\n", note);
      break;
    }
  }
  return kExitOk;
}

// ---- watch ----------------------------------------------------------------------------------

struct WatchArgs {
  double interval = 1.0;
  int count = 0;  // 0 = until interrupted or a threshold is exceeded
  std::vector<std::string> thresholds;
};

int runWatch(const Common& c, const WatchArgs& a) {
  std::vector<conntrack::Threshold> limits;
  for (const std::string& t : a.thresholds) {
    Result<conntrack::Threshold> th = conntrack::parseThreshold(t);
    if (!th) return fail(c, th.status());
    limits.push_back(*th);
  }
  if (!(a.interval > 0) || a.interval > 3600) {
    return fail(c, Status(Code::kInvalidArgument, "--interval must be in (0, 3600] seconds"));
  }
  Result<conntrack::Stats> prev = conntrack::readStats(c.netns);
  if (!prev) return fail(c, prev.status());
  auto prevAt = std::chrono::steady_clock::now();
  if (c.format() == Format::kText) {
    fmt::print("{:>8} {:>12} {:>12} {:>10} {:>10} {:>10} {:>9}  {}\n", "t(s)", "insert_fail/s", "clash_res/s",
               "drop/s", "early/s", "invalid/s", "fill", "hot CPUs (insert_failed)");
  }
  double elapsed = 0;
  for (int i = 0; a.count == 0 || i < a.count; ++i) {
    std::this_thread::sleep_for(std::chrono::duration<double>(a.interval));
    Result<conntrack::Stats> cur = conntrack::readStats(c.netns);
    if (!cur) return fail(c, cur.status());
    const auto now = std::chrono::steady_clock::now();
    const double dt = std::chrono::duration<double>(now - prevAt).count();
    elapsed += dt;
    conntrack::Rates r = conntrack::rates(*prev, *cur, dt);
    std::vector<conntrack::Threshold> over = conntrack::exceeded(r, limits);
    auto hot = conntrack::hotCpus(r, Counter::kInsertFailed, 4);
    auto rate = [&](Counter k) { return r.get(k).value_or(0.0); };
    switch (c.format()) {
      case Format::kJson: {
        json j = header(c, "watch");
        j["t"] = elapsed;
        j["interval"] = dt;
        j["rates"] = json::object();
        for (Counter k : conntrack::allCounters()) {
          if (r.get(k)) j["rates"][conntrack::counterName(k)] = *r.get(k);
        }
        j["hot_cpus"] = json::array();
        for (const auto& [cpu, v] : hot) j["hot_cpus"].push_back({{"cpu", cpu}, {"insert_failed", v}});
        j["table"] = tableJson(*cur);
        j["exceeded"] = json::array();
        for (const auto& t : over) {
          j["exceeded"].push_back({{"counter", conntrack::counterName(t.counter)}, {"limit", t.perSecond},
                                   {"rate", rate(t.counter)}});
        }
        std::cout << j.dump() << std::endl;  // NDJSON: one flushed line per interval
        break;
      }
      case Format::kProm: {
        for (Counter k : conntrack::allCounters()) {
          if (r.get(k)) fmt::print("sluice_conntrack_{}_per_second {}\n", conntrack::counterName(k), *r.get(k));
        }
        fmt::print("\n");
        std::fflush(stdout);
        break;
      }
      case Format::kText: {
        std::vector<std::string> hotText;
        for (const auto& [cpu, v] : hot) hotText.push_back(fmt::format("cpu{}={:.1f}", cpu, v));
        fmt::print("{:>8.1f} {:>12.1f} {:>12.1f} {:>10.1f} {:>10.1f} {:>10.1f} {:>9}  {}\n", elapsed,
                   rate(Counter::kInsertFailed), rate(Counter::kClashResolve), rate(Counter::kDrop),
                   rate(Counter::kEarlyDrop), rate(Counter::kInvalid),
                   cur->fill() ? fmt::format("{:.1f}%", *cur->fill() * 100) : "?", fmt::join(hotText, " "));
        for (const auto& t : over) {
          fmt::print("threshold exceeded: {} {:.2f}/s > {:.2f}/s\n", conntrack::counterName(t.counter),
                     rate(t.counter), t.perSecond);
        }
        std::fflush(stdout);
        break;
      }
    }
    if (!over.empty()) return kExitFinding;
    prev = std::move(cur);
    prevAt = now;
  }
  return kExitOk;
}

// ---- doctor ---------------------------------------------------------------------------------

int runDoctor(const Common& c) {
  diag::DoctorInput in;
  Result<std::vector<diag::NatStatement>> nat = diag::readNatStatements(c.netns);
  if (!nat) return fail(c, nat.status());
  in.nat = *nat;
  Result<conntrack::Stats> stats = conntrack::readStats(c.netns);
  if (stats) in.stats = *stats;
  in.legacyTables = diag::legacyIptablesTables(c.netns);
  std::vector<diag::Finding> findings = diag::diagnose(in);
  size_t problems = 0;
  for (const auto& f : findings) problems += f.severity != diag::Severity::kInfo ? 1 : 0;

  switch (c.format()) {
    case Format::kJson: {
      json j = header(c, "doctor");
      j["kernel"] = kernelRelease();
      j["nat_rules"] = json::array();
      for (const auto& st : in.nat) {
        j["nat_rules"].push_back({{"family", st.family}, {"table", st.table}, {"chain", st.chain},
                                  {"handle", st.handle}, {"kind", st.kindName()},
                                  {"origin", st.origin == diag::NatStatement::Origin::kXtables ? "xtables" : "nftables"},
                                  {"flags", st.flags ? json(*st.flags) : json(nullptr)},
                                  {"fully_random", st.fullyRandom()}, {"target", st.target}});
      }
      j["findings"] = json::array();
      for (const auto& f : findings) {
        j["findings"].push_back({{"id", f.id}, {"severity", diag::severityName(f.severity)}, {"title", f.title},
                                 {"location", f.location}, {"evidence", f.evidence}, {"fix", f.fix},
                                 {"tradeoff", f.tradeoff}});
      }
      j["problems"] = problems;
      std::cout << j.dump(2) << "\n";
      break;
    }
    case Format::kProm: {
      size_t notRandom = 0;
      for (const auto& st : in.nat) notRandom += st.fullyRandom() ? 0 : 1;
      fmt::print("# TYPE sluice_ct_snat_rules gauge\nsluice_ct_snat_rules {}\n", in.nat.size());
      fmt::print("# TYPE sluice_ct_snat_rules_not_fully_random gauge\nsluice_ct_snat_rules_not_fully_random {}\n",
                 notRandom);
      fmt::print("# TYPE sluice_ct_doctor_findings gauge\n");
      for (auto sev : {diag::Severity::kInfo, diag::Severity::kWarning, diag::Severity::kCritical}) {
        size_t n = 0;
        for (const auto& f : findings) n += f.severity == sev ? 1 : 0;
        fmt::print("sluice_ct_doctor_findings{{severity=\"{}\"}} {}\n", diag::severityName(sev), n);
      }
      break;
    }
    case Format::kText: {
      fmt::print("source NAT statements found: {}\n", in.nat.size());
      for (const auto& st : in.nat) {
        fmt::print("  {:<40} {:<28} {}\n", st.location(), st.kindName(),
                   st.flags ? (st.fullyRandom() ? "fully-random" : fmt::format("flags {:#x}", *st.flags))
                            : "flags unknown");
      }
      fmt::print("\n");
      for (const auto& f : findings) {
        fmt::print("[{}] {}: {}\n", diag::severityName(f.severity), f.id, f.title);
        if (!f.location.empty()) fmt::print("  where:    {}\n", f.location);
        if (!f.evidence.empty()) fmt::print("  evidence: {}\n", f.evidence);
        if (!f.fix.empty()) fmt::print("  fix:      {}\n", f.fix);
        if (!f.tradeoff.empty()) fmt::print("  tradeoff: {}\n", f.tradeoff);
        fmt::print("\n");
      }
      fmt::print("{}\n", problems == 0 ? "no problems found" : fmt::format("{} problem(s) found", problems));
      break;
    }
  }
  return problems == 0 ? kExitOk : kExitFinding;
}

// ---- ports ----------------------------------------------------------------------------------

struct PortsArgs {
  size_t top = 10;
  std::string range;  // "A-B" override
};

int runPorts(const Common& c, const PortsArgs& a) {
  // The range masquerade/snat pick from when the rule names none; ip_local_port_range is
  // reported alongside because it bounds the node's own outgoing connections.
  diag::PortRange range = diag::kNatDefaultRange;
  std::string rangeSource = "nat-default";
  if (!a.range.empty()) {
    std::string spaced = a.range;
    for (char& ch : spaced) ch = ch == '-' ? ' ' : ch;
    std::optional<diag::PortRange> r = diag::parsePortRange(spaced);
    if (!r) return fail(c, Status(Code::kInvalidArgument, fmt::format("--range '{}': want FIRST-LAST", a.range)));
    range = *r;
    rangeSource = "flag";
  }
  std::optional<diag::PortRange> local;
  if (Result<std::string> text = readFileInNetns(c.netns, "/proc/sys/net/ipv4/ip_local_port_range")) {
    local = diag::parsePortRange(*text);
  }
  Result<std::unique_ptr<conntrack::Client>> client = conntrack::Client::open(c.netns);
  if (!client) return fail(c, client.status());
  // One dump per family; both are needed because SNAT happens in both.
  std::vector<conntrack::Flow> flows;
  for (IPFamily f : {IPFamily::kV4, IPFamily::kV6}) {
    Result<std::vector<conntrack::Flow>> part = (*client)->dump(f);
    if (!part) return fail(c, part.status());
    flows.insert(flows.end(), part->begin(), part->end());
  }
  diag::PortReport rep = diag::analyzePorts(flows, range, a.top);
  switch (c.format()) {
    case Format::kJson: {
      json j = header(c, "ports");
      j["flows"] = rep.flows;
      j["snat_flows"] = rep.snatFlows;
      j["range"] = {{"first", range.first}, {"last", range.last}, {"size", range.size()}, {"source", rangeSource}};
      j["ip_local_port_range"] = local ? json{{"first", local->first}, {"last", local->last}} : json(nullptr);
      j["usage"] = json::array();
      for (const auto& u : rep.usage) {
        j["usage"].push_back({{"proto", protocolNftName(u.proto)}, {"snat_ip", u.snatIP.toString()},
                              {"dst_ip", u.dst.toString()}, {"dst_port", u.dstPort}, {"tuples", u.tuples},
                              {"clients", u.clients}, {"utilization", u.utilization}});
      }
      j["top_talkers"] = json::array();
      for (const auto& t : rep.topTalkers) j["top_talkers"].push_back({{"source", t.source.toString()}, {"flows", t.flows}});
      std::cout << j.dump(2) << "\n";
      break;
    }
    case Format::kProm: {
      fmt::print("# TYPE sluice_snat_port_tuples gauge\n");
      for (const auto& u : rep.usage) {
        fmt::print("sluice_snat_port_tuples{{proto=\"{}\",snat_ip=\"{}\",dst=\"{}\"}} {}\n", protocolNftName(u.proto),
                   promEscape(u.snatIP.toString()), promEscape(fmt::format("{}:{}", u.dst.toString(), u.dstPort)),
                   u.tuples);
      }
      fmt::print("# TYPE sluice_snat_port_range_size gauge\nsluice_snat_port_range_size {}\n", range.size());
      break;
    }
    case Format::kText: {
      fmt::print("{} entries, {} source-NATed; port range {}-{} ({} ports, {})", rep.flows, rep.snatFlows,
                 range.first, range.last, range.size(), rangeSource);
      if (local) fmt::print("; ip_local_port_range {}-{}", local->first, local->last);
      fmt::print("\n\n{:<5} {:<18} {:<24} {:>8} {:>8} {:>8}\n", "proto", "snat ip", "destination", "tuples",
                 "clients", "used");
      for (const auto& u : rep.usage) {
        fmt::print("{:<5} {:<18} {:<24} {:>8} {:>8} {:>7.2f}%\n", protocolNftName(u.proto), u.snatIP.toString(),
                   fmt::format("{}:{}", u.dst.toString(), u.dstPort), u.tuples, u.clients, u.utilization * 100);
      }
      fmt::print("\ntop talkers (source-NATed entries by original source):\n");
      for (const auto& t : rep.topTalkers) fmt::print("  {:<40} {:>8}\n", t.source.toString(), t.flows);
      break;
    }
  }
  return kExitOk;
}

// ---- flush-backend --------------------------------------------------------------------------

struct FlushArgs {
  std::string ip;
  std::string vip;
  std::string proto;
  bool dryRun = false;
};

Result<conntrack::BackendSelector> selectorOf(const FlushArgs& a) {
  conntrack::BackendSelector sel;
  Result<IPAddress> ip = IPAddress::parse(a.ip);
  if (!ip) return Status(Code::kInvalidArgument, fmt::format("--ip '{}': {}", a.ip, ip.status().message()));
  sel.backend = *ip;
  if (!a.vip.empty()) {
    // V, V:port, [V6] or [V6]:port
    std::string host = a.vip;
    std::string port;
    if (host.front() == '[') {
      const size_t close = host.find(']');
      if (close == std::string::npos) return Status(Code::kInvalidArgument, "--vip: missing ']'");
      if (close + 1 < host.size() && host[close + 1] == ':') port = host.substr(close + 2);
      host = host.substr(1, close - 1);
    } else if (std::count(host.begin(), host.end(), ':') == 1) {
      port = host.substr(host.find(':') + 1);
      host = host.substr(0, host.find(':'));
    }
    Result<IPAddress> vip = IPAddress::parse(host);
    if (!vip) return Status(Code::kInvalidArgument, fmt::format("--vip '{}': {}", a.vip, vip.status().message()));
    if (vip->family() != ip->family()) return Status(Code::kInvalidArgument, "--vip and --ip differ in family");
    sel.vip = *vip;
    if (!port.empty()) {
      char* end = nullptr;
      unsigned long p = std::strtoul(port.c_str(), &end, 10);
      if (*end != '\0' || p == 0 || p > 65535) return Status(Code::kInvalidArgument, fmt::format("--vip port '{}'", port));
      sel.vipPort = static_cast<uint16_t>(p);
    }
  }
  if (!a.proto.empty()) {
    std::string upper = a.proto;
    for (char& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    Result<Protocol> p = parseProtocol(upper);
    if (!p) return Status(Code::kInvalidArgument, fmt::format("--proto '{}': want tcp, udp or sctp", a.proto));
    sel.proto = *p;
  }
  return sel;
}

int runFlush(const Common& c, const FlushArgs& a) {
  Result<conntrack::BackendSelector> sel = selectorOf(a);
  if (!sel) return fail(c, sel.status());
  Result<std::unique_ptr<conntrack::Client>> client = conntrack::Client::open(c.netns);
  if (!client) return fail(c, client.status());
  std::vector<conntrack::Flow> matched;
  size_t deleted = 0;
  if (a.dryRun) {
    Result<std::vector<conntrack::Flow>> flows = (*client)->dump(sel->backend.family());
    if (!flows) return fail(c, flows.status());
    for (auto& f : *flows) {
      if (sel->matches(f)) matched.push_back(std::move(f));
    }
  } else {
    // One streamed dump, deletes on the client's second socket, entries already gone count as
    // success, an interrupted dump is repeated: the reconciler's UDP cleanup path.
    Result<size_t> n = (*client)->removeIf(sel->backend.family(),
                                           [&](const conntrack::Flow& f) { return sel->matches(f); });
    if (!n) return fail(c, n.status());
    deleted = *n;
  }
  switch (c.format()) {
    case Format::kJson: {
      json j = header(c, "flush-backend");
      j["backend"] = sel->backend.toString();
      j["vip"] = sel->vip ? json(sel->vip->toString()) : json(nullptr);
      j["vip_port"] = sel->vipPort ? json(*sel->vipPort) : json(nullptr);
      j["proto"] = sel->proto ? json(protocolNftName(*sel->proto)) : json(nullptr);
      j["dry_run"] = a.dryRun;
      j["deleted"] = deleted;
      j["matched"] = json::array();
      for (const auto& f : matched) j["matched"].push_back(f.toString());
      std::cout << j.dump(2) << "\n";
      break;
    }
    case Format::kProm:
      fmt::print("# TYPE sluice_ct_flush_entries gauge\nsluice_ct_flush_entries{{dry_run=\"{}\"}} {}\n",
                 a.dryRun ? "true" : "false", a.dryRun ? matched.size() : deleted);
      break;
    case Format::kText:
      if (a.dryRun) {
        for (const auto& f : matched) fmt::print("{}\n", f.toString());
        fmt::print("{} entries would be deleted (dry run)\n", matched.size());
      } else {
        fmt::print("{} entries deleted\n", deleted);
      }
      break;
  }
  return kExitOk;
}

// ---- lab ------------------------------------------------------------------------------------

struct LabArgs {
  testbed::SnatLabOptions o;  // the lab's defaults are the flags' defaults
  std::string flags = "none";
  std::string clientPorts = fmt::format("{}-{}", o.clientPorts->first, o.clientPorts->second);
  std::string proto = "tcp";
  int timeoutMs = static_cast<int>(testbed::SnatLabOptions{}.timeout.count());
};

int runLab(const Common& c, LabArgs a) {
  if (!c.netns.empty()) {
    return fail(c, Status(Code::kInvalidArgument, "lab builds its own namespaces; --netns does not apply"));
  }
  testbed::SnatLabOptions& o = a.o;
  if (a.flags == "none") {
    o.natFlags = 0;
  } else if (a.flags == "random") {
    o.natFlags = diag::kNatRangeProtoRandom;
  } else if (a.flags == "fully-random") {
    o.natFlags = diag::kNatRangeProtoRandomFully;
  } else {
    return fail(c, Status(Code::kInvalidArgument, "--flags: want none, random or fully-random"));
  }
  o.timeout = std::chrono::milliseconds(a.timeoutMs);
  if (a.proto != "udp" && a.proto != "tcp") return fail(c, Status(Code::kInvalidArgument, "--proto: tcp or udp"));
  o.proto = a.proto == "udp" ? Protocol::kUDP : Protocol::kTCP;
  if (a.clientPorts == "default") {
    o.clientPorts.reset();
  } else {
    std::string spaced = a.clientPorts;
    for (char& ch : spaced) ch = ch == '-' ? ' ' : ch;
    std::optional<diag::PortRange> r = diag::parsePortRange(spaced);
    if (!r) return fail(c, Status(Code::kInvalidArgument, "--client-ports: want FIRST-LAST or default"));
    o.clientPorts = std::pair<uint16_t, uint16_t>{r->first, r->last};
  }
  Result<testbed::SnatLabResult> res = testbed::runSnatLab(o);
  if (!res) return fail(c, res.status());
  switch (c.format()) {
    case Format::kJson: {
      json j = header(c, "lab");
      j["flags"] = a.flags;
      j["rule"] = res->ruleText;
      j["proto"] = a.proto;
      j["clients"] = o.clients;
      j["attempts"] = res->attempts;
      j["answered"] = res->answered;
      j["failed"] = res->failed();
      j["failures"] = res->failures;
      j["delta"] = countersJson(res->delta);
      j["before"] = countersJson(res->before.total);
      j["after"] = countersJson(res->after.total);
      std::cout << j.dump(2) << "\n";
      break;
    }
    case Format::kProm:
      for (Counter k : conntrack::allCounters()) {
        if (res->delta.has(k)) fmt::print("sluice_ct_lab_{}_delta{{flags=\"{}\"}} {}\n", conntrack::counterName(k), a.flags, res->delta.get(k));
      }
      fmt::print("sluice_ct_lab_client_failures{{flags=\"{}\"}} {}\n", a.flags, res->failed());
      break;
    case Format::kText: {
      fmt::print("node rule: {}\n", res->ruleText);
      fmt::print("{} clients x {} rounds x {} parallel {} connections, client ports {}\n\n", o.clients, o.rounds,
                 o.burst, a.proto, a.clientPorts);
      fmt::print("{:<16} {:>10}    {:<22} {:>6}\n", "node counter", "delta", "clients saw", "");
      std::vector<std::pair<std::string, int>> seen = {{"attempts", res->attempts}, {"answered", res->answered}};
      for (const auto& [k, v] : res->failures) seen.emplace_back(k, v);
      size_t row = 0;
      for (Counter k : {Counter::kInsertFailed, Counter::kClashResolve, Counter::kDrop, Counter::kEarlyDrop,
                        Counter::kInvalid, Counter::kFound}) {
        std::string right = row < seen.size() ? fmt::format("{:<22} {:>6}", seen[row].first, seen[row].second) : "";
        fmt::print("{:<16} {:>10}    {}\n", conntrack::counterName(k),
                   res->delta.has(k) ? std::to_string(res->delta.get(k)) : "n/a", right);
        ++row;
      }
      for (; row < seen.size(); ++row) fmt::print("{:<27}    {:<22} {:>6}\n", "", seen[row].first, seen[row].second);
      break;
    }
  }
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sluice-ct: conntrack and SNAT-collision diagnostics"};
  app.require_subcommand(1);
  app.fallthrough();
  Common common;
  app.add_option("--netns", common.netns, "network namespace: NAME (/run/netns), PATH or PID")->capture_default_str();
  app.add_option("-o,--output", common.output, "output format")
      ->check(CLI::IsMember({"text", "json", "prom"}))
      ->capture_default_str();

  app.add_subcommand("stats", "per-CPU and total conntrack counters, table fill");

  WatchArgs watch;
  auto* w = app.add_subcommand("watch", "per-second counter rates; exit 1 when a --threshold is exceeded");
  w->add_option("--interval", watch.interval, "seconds between readings")->capture_default_str();
  w->add_option("--count", watch.count, "readings to take (0 = until a threshold is exceeded)")->capture_default_str();
  w->add_option("--threshold", watch.thresholds, "NAME=RATE, e.g. insert_failed=1 (per second); repeatable");

  app.add_subcommand("doctor", "flag source NAT without fully-random, a full table, drops; exit 1 on problems");

  PortsArgs ports;
  auto* p = app.add_subcommand("ports", "SNAT port use per (protocol, SNAT IP, destination) and top talkers");
  p->add_option("--top", ports.top, "talkers to list")->capture_default_str();
  p->add_option("--range", ports.range, "port range FIRST-LAST to measure against (default: NAT's 1024-65535)");

  FlushArgs flush;
  auto* f = app.add_subcommand("flush-backend", "delete the conntrack entries of traffic to one backend");
  f->add_option("--ip", flush.ip, "backend address")->required();
  f->add_option("--vip", flush.vip, "only flows to this Service address: V, V:PORT, [V6]:PORT");
  f->add_option("--proto", flush.proto, "tcp, udp or sctp");
  f->add_flag("--dry-run", flush.dryRun, "list what would be deleted");

  LabArgs lab;
  auto* l = app.add_subcommand("lab", "reproduce SNAT port collisions in throw-away namespaces");
  l->add_option("--flags", lab.flags, "masquerade flags: none, random, fully-random")->capture_default_str();
  l->add_option("--clients", lab.o.clients, "client namespaces (1-20)")->capture_default_str();
  l->add_option("--rounds", lab.o.rounds, "bursts")->capture_default_str();
  l->add_option("--burst", lab.o.burst, "parallel connections per client and burst")->capture_default_str();
  l->add_option("--client-ports", lab.clientPorts, "clients' ip_local_port_range FIRST-LAST, or default")
      ->capture_default_str();
  l->add_option("--proto", lab.proto, "tcp or udp")->capture_default_str();
  l->add_option("--timeout-ms", lab.timeoutMs, "client wait per connection")->capture_default_str();
  l->add_option("--slow-path-rules", lab.o.slowPathRules,
                "never-matching rules between NAT and confirmation that widen the race window")
      ->capture_default_str();

  // Subcommand help lists only the command's own flags; the shared ones apply to every command.
  for (CLI::App* sub : app.get_subcommands({})) {
    sub->footer("Also: --netns NAME|PATH|PID, -o text|json|prom (before or after the command). "
                "Exit: 0 ok, 1 finding/threshold, 2 error.");
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitError;
  }

  const std::string cmd = app.get_subcommands().front()->get_name();
  if (cmd == "stats") return runStats(common);
  if (cmd == "watch") return runWatch(common, watch);
  if (cmd == "doctor") return runDoctor(common);
  if (cmd == "ports") return runPorts(common, ports);
  if (cmd == "flush-backend") return runFlush(common, flush);
  if (cmd == "lab") return runLab(common, lab);
  return kExitError;
}
