// Reading the shared Kubernetes/etcd fixtures (../shared/fixtures) in tests.
#pragma once

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sluice::testing {

inline std::string fixturePath(const std::string& rel) { return std::string(SLUICE_FIXTURES_DIR) + "/" + rel; }

inline std::string readFixture(const std::string& rel) {
  std::ifstream in(fixturePath(rel), std::ios::binary);
  if (!in) throw std::runtime_error("cannot open fixture " + rel);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline nlohmann::json fixtureJson(const std::string& rel) { return nlohmann::json::parse(readFixture(rel)); }

// One JSON document per line.
inline std::vector<nlohmann::json> fixtureLines(const std::string& rel) {
  std::vector<nlohmann::json> out;
  std::istringstream in(readFixture(rel));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

}  // namespace sluice::testing
