// sluiced — sluice's node proxy daemon, a kube-proxy replacement on nftables.
//
// This file only turns the command line into ProxyOptions: the flag table, the config file
// format and the checks live in the library (sluice/proxy_options.h).
#include <malloc.h>

#include <cstdlib>
#include <iostream>
#include <map>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "sluice/logging.h"
#include "sluice/proxy_metrics.h"
#include "sluiced.h"

int main(int argc, char** argv) {
  // One malloc arena for all threads (unless MALLOC_ARENA_MAX says otherwise). glibc gives each
  // thread that allocates its own arena, and memory freed in one is never reused by another:
  // the manifest is decoded on this thread and the first full sync is planned on the runner's,
  // so each kept its own peak. At 10 000 Services this took RSS after the first sync from
  // 114 to 83 MiB (bench/daemon_bench.py); sluiced's threads rarely allocate at once.
  if (!std::getenv("MALLOC_ARENA_MAX")) mallopt(M_ARENA_MAX, 1);
  CLI::App app{"sluiced: service proxy for Linux nodes (kube-proxy replacement on nftables).\n"
               "Flags given on the command line override the --config file, which overrides the defaults.\n"
               "Signals: SIGTERM/SIGINT stop and leave the rules in place; SIGHUP reloads the configuration.",
               "sluiced"};
  app.set_version_flag("--version", std::string("sluiced ") + sluice::ProxyMetrics::version());
  app.get_formatter()->column_width(42);

  // Every flag is taken as text and handed to the library's parser in command-line order, so
  // an error names the flag exactly as the library reports it.
  std::map<std::string, std::string> values;
  std::map<std::string, bool> bools;
  std::vector<std::pair<const sluice::FlagSpec*, CLI::Option*>> registered;
  for (const sluice::FlagSpec& spec : sluice::proxyFlags()) {
    std::string help = spec.help;
    if (!spec.configField.empty()) help += " [config: " + spec.configField + "]";
    if (!spec.defaultText.empty()) help += " (default " + spec.defaultText + ")";
    CLI::Option* opt;
    if (spec.valueName.empty()) {
      opt = app.add_flag(spec.flag, bools[spec.flag], help);
    } else {
      opt = app.add_option(spec.flag, values[spec.flag], help)->type_name(spec.valueName);
    }
    registered.emplace_back(&spec, opt);
  }

  // `sluiced explain SRC DST:PORT/PROTO`: the daemon's flags (--source, --config, …) still
  // apply, so the answer is computed from the same desired state and ProxyConfig.
  CLI::App* explainCmd = app.add_subcommand(
      "explain", "Show what the rules do with one new connection: Service, endpoints and their probabilities, "
                 "masquerade, reject/drop and why, the matched rules.");
  explainCmd->fallthrough();
  std::string explainSrc, explainDst;
  bool explainFromNode = false, explainJson = false;
  explainCmd->add_option("SRC", explainSrc, "source address")->required();
  explainCmd->add_option("DST:PORT/PROTO", explainDst, "destination, e.g. 198.19.0.10:80/tcp or [fd00::a]:53/udp")
      ->required();
  explainCmd->add_flag("--from-node", explainFromNode, "sent by a process on the node (output hook)");
  explainCmd->add_flag("--json", explainJson, "print JSON");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "sluiced: " << e.what() << "\nRun sluiced --help for the flags.\n";
    return sluiced::kExitUsage;
  }

  std::vector<std::pair<std::string, std::string>> given;
  for (const auto& [spec, opt] : registered) {
    if (opt->count() == 0) continue;
    given.emplace_back(spec->flag, spec->valueName.empty() ? (bools[spec->flag] ? "true" : "false") : values[spec->flag]);
  }

  std::vector<std::string> warnings;
  auto options = sluice::resolveOptions(given, &warnings);
  if (!options) {
    std::cerr << "sluiced: invalid configuration:\n" << options.status().message() << "\n";
    return sluiced::kExitUsage;
  }
  if (sluice::Status st = sluice::setupLogging(options->logFormat, options->logLevel); !st) {
    std::cerr << "sluiced: " << st.message() << "\n";
    return sluiced::kExitUsage;
  }
  for (const std::string& w : warnings) spdlog::warn("config: {}", w);

  if (options->cleanup) return sluiced::runCleanup(*options);
  if (explainCmd->parsed())
    return sluiced::runExplain(*options, explainSrc, explainDst, explainFromNode, explainJson);
  return sluiced::runDaemon(std::move(options).value(), std::move(given));
}
