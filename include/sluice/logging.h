// sluice/logging.h — process-wide log setup for sluice programs and node agents.
//
// sluice logs through spdlog's default logger. setupLogging() replaces it with a stderr
// logger in one of two formats: "text" (human: time, level, message) or "json" (one object per
// line: {"ts","level","logger","msg"}, the message JSON-escaped), for log collectors.
#pragma once

#include <string>

#include "sluice/status.h"

namespace sluice {

// `format` "text" | "json"; `level` "trace" | "debug" | "info" | "warn" | "error".
// kInvalidArgument for anything else; the previous logger stays in place then.
Status setupLogging(const std::string& format, const std::string& level);

// JSON string escaping of `text` without the surrounding quotes (exposed for tests).
std::string jsonEscape(const std::string& text);

}  // namespace sluice
