#include "sluice/node_status.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace sluice {

std::string htmlEscape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string statusJson(const NodeStatus& s) {
  nlohmann::json j;
  j["nodeName"] = s.nodeName;
  j["version"] = s.version;
  j["source"] = s.source;
  j["netns"] = s.netns;
  j["started"] = formatTimestamp(s.started);
  j["currentTime"] = formatTimestamp(s.now);
  j["healthy"] = s.healthy;
  j["nodeEligible"] = s.nodeEligible;
  j["families"] = nlohmann::json::array();
  for (const FamilySyncStatus& f : s.families) {
    j["families"].push_back({{"family", familyName(f.family)},
                             {"syncs", f.syncs},
                             {"failures", f.failures},
                             {"lastOk", f.lastOk},
                             {"lastFull", f.lastFull},
                             {"lastError", f.lastError},
                             {"lastAttempt", formatTimestamp(f.lastAttempt)},
                             {"lastSuccess", formatTimestamp(f.lastSuccess)},
                             {"lastDurationSeconds", f.lastDurationSeconds},
                             {"lastOperations", f.lastOperations},
                             {"services", f.services},
                             {"endpoints", f.endpoints},
                             {"driftRepairs", f.driftRepairs}});
  }
  j["problems"] = nlohmann::json::array();
  for (const Problem& p : s.problems) j["problems"].push_back({{"object", p.object}, {"field", p.field}, {"reason", p.reason}});
  j["healthCheckNodePorts"] = nlohmann::json::array();
  for (const auto& [id, h] : s.healthCheckNodePorts)
    j["healthCheckNodePorts"].push_back({{"service", {{"namespace", id.ns}, {"name", id.name}}},
                                         {"nodePort", h.nodePort},
                                         {"localEndpoints", h.localEndpoints}});
  j["sources"] = nlohmann::json::array();
  for (const NodeStatus::SourceStatus& src : s.sources)
    j["sources"].push_back({{"name", src.name}, {"synced", src.synced}, {"detail", src.detail}});
  j["nodeWatch"] = nullptr;
  if (const auto& n = s.nodeWatch)
    j["nodeWatch"] = {{"name", s.nodeName},       {"present", n->present},         {"eligible", s.nodeEligible},
                      {"zone", n->zone},          {"deletionPending", n->deletionPending},
                      {"toBeDeleted", n->toBeDeleted}};
  j["draining"] = nlohmann::json::array();
  for (const DrainingEndpoint& d : s.draining)
    j["draining"].push_back({{"service", {{"namespace", d.servicePort.service.ns}, {"name", d.servicePort.service.name}}},
                             {"port", d.servicePort.portName},
                             {"protocol", protocolName(d.servicePort.protocol)},
                             {"endpoint", d.ip.toString() + ":" + std::to_string(d.port)},
                             {"since", formatTimestamp(d.since)},
                             {"deadline", formatTimestamp(d.deadline)},
                             {"liveFlows", d.liveFlows},
                             {"serving", d.serving}});
  return j.dump(2) + "\n";
}

std::string statusHtml(const NodeStatus& s) {
  std::string out = fmt::format(
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>sluiced on {0}</title>\n"
      "<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}"
      "td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}.bad{{color:#b00}}.good{{color:#070}}</style>"
      "</head><body>\n<h1>sluiced on {0}</h1>\n"
      "<p>version {1} &middot; source <code>{2}</code>{3} &middot; started {4} &middot; now {5}</p>\n"
      "<p>proxy <b class=\"{6}\">{7}</b> &middot; node {8}</p>\n",
      htmlEscape(s.nodeName), htmlEscape(s.version), htmlEscape(s.source),
      s.netns.empty() ? "" : " &middot; netns <code>" + htmlEscape(s.netns) + "</code>", formatTimestamp(s.started),
      formatTimestamp(s.now), s.healthy ? "good" : "bad", s.healthy ? "healthy" : "unhealthy",
      s.nodeEligible ? "eligible" : "<b class=\"bad\">not eligible</b>");
  if (const auto& n = s.nodeWatch)
    out += fmt::format("<p>Node object: {} &middot; zone <code>{}</code>{}{}</p>\n", n->present ? "present" : "<b class=\"bad\">not found</b>",
                       htmlEscape(n->zone.empty() ? "(none)" : n->zone), n->deletionPending ? " &middot; being deleted" : "",
                       n->toBeDeleted ? " &middot; ToBeDeletedByClusterAutoscaler" : "");
  out += "<h2>Syncs</h2>\n<table><tr><th>family</th><th>syncs</th><th>failures</th><th>last</th><th>kind</th>"
         "<th>duration</th><th>operations</th><th>services</th><th>last success</th><th>error</th></tr>\n";
  for (const FamilySyncStatus& f : s.families) {
    out += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{:.3f} s</td>"
                       "<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                       familyName(f.family), f.syncs, f.failures, f.lastOk ? "good" : "bad",
                       f.syncs == 0 ? "none yet" : (f.lastOk ? "ok" : "failed"), f.lastFull ? "full" : "partial",
                       f.lastDurationSeconds, f.lastOperations, f.services, formatTimestamp(f.lastSuccess),
                       htmlEscape(f.lastError));
  }
  out += "</table>\n";
  out += fmt::format("<h2>Health-check node ports ({})</h2>\n", s.healthCheckNodePorts.size());
  if (!s.healthCheckNodePorts.empty()) {
    out += "<table><tr><th>Service</th><th>node port</th><th>local endpoints</th></tr>\n";
    for (const auto& [id, h] : s.healthCheckNodePorts)
      out += fmt::format("<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>\n", htmlEscape(id.toString()),
                         h.nodePort, h.localEndpoints > 0 ? "good" : "bad", h.localEndpoints);
    out += "</table>\n";
  }
  out += fmt::format("<h2>Draining endpoints ({})</h2>\n", s.draining.size());
  if (!s.draining.empty()) {
    out += "<table><tr><th>Service</th><th>endpoint</th><th>live flows</th><th>deadline</th></tr>\n";
    for (const DrainingEndpoint& d : s.draining)
      out += fmt::format("<tr><td>{}</td><td>{}:{}</td><td>{}</td><td>{}</td></tr>\n",
                         htmlEscape(d.servicePort.service.toString()), htmlEscape(d.ip.toString()), d.port,
                         d.liveFlows, formatTimestamp(d.deadline));
    out += "</table>\n";
  }
  out += fmt::format("<h2>Problems ({})</h2>\n", s.problems.size());
  if (!s.problems.empty()) {
    out += "<table><tr><th>object</th><th>field</th><th>reason</th></tr>\n";
    for (const Problem& p : s.problems)
      out += fmt::format("<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>\n", htmlEscape(p.object),
                         htmlEscape(p.field), htmlEscape(p.reason));
    out += "</table>\n";
  }
  out += "<p><a href=\"/status\">JSON</a> &middot; <a href=\"/metrics\">metrics</a> &middot; "
         "<a href=\"/healthz\">healthz</a></p>\n</body></html>\n";
  return out;
}

}  // namespace sluice
