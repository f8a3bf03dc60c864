// The core's diagnostics: what went wrong in the background (a worker, a sweep, a callback)
// that no caller will see as an exception. They go to a sink: the Python package sends them
// to the `logging` logger "imagerelay"; without a sink, to stderr.
#pragma once

#include <functional>
#include <string>
#include <string_view>

namespace imagerelay {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

using LogSink = std::function<void(LogLevel level, const std::string& message)>;

// Replaces the process's sink (an empty one: stderr). The sink may be called from any thread,
// never under an engine lock that a caller could wait on.
void SetLogSink(LogSink sink);
void Log(LogLevel level, const std::string& message);

}  // namespace imagerelay
