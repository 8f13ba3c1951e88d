#include "read_file.h"

#include <cerrno>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

namespace sluice {

Result<std::string> readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::fromErrno(errno != 0 ? errno : ENOENT, fmt::format("cannot read {}", path));
  std::string text;
  std::error_code ec;
  if (auto size = std::filesystem::file_size(path, ec); !ec) text.reserve(size);  // one allocation
  char buf[16 * 1024];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) text.append(buf, size_t(in.gcount()));
  return text;
}

}  // namespace sluice
