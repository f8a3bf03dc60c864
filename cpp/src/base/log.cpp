#include "imagerelay/log.hpp"

#include <cstdio>
#include <memory>
#include <mutex>

namespace imagerelay {
namespace {

std::mutex& SinkMutex() {
  static std::mutex mutex;
  return mutex;
}

std::shared_ptr<LogSink>& Sink() {
  static std::shared_ptr<LogSink> sink;
  return sink;
}

std::string_view LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "error";
}

}  // namespace

void SetLogSink(LogSink sink) {
  std::lock_guard lock(SinkMutex());
  Sink() = sink ? std::make_shared<LogSink>(std::move(sink)) : nullptr;
}

void Log(LogLevel level, const std::string& message) {
  std::shared_ptr<LogSink> sink;
  {
    std::lock_guard lock(SinkMutex());
    sink = Sink();
  }
  if (sink) {
    try {
      (*sink)(level, message);
      return;
    } catch (...) {
      // A sink that fails: the message still goes somewhere.
    }
  }
  std::fprintf(stderr, "imagerelay: %s: %s\n", std::string(LevelName(level)).c_str(),
               message.c_str());
}

}  // namespace imagerelay
