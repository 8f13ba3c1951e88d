// read_file.h — a whole file into a string (kubeconfig, tokens, manifests).
#pragma once

#include <string>

#include "sluice/status.h"

namespace sluice {

// Errors name the path and carry errno's code (NotFound, PermissionDenied...).
Result<std::string> readFile(const std::string& path);

}  // namespace sluice
