#include "base/fail_point.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>

namespace imagerelay::fail_point_detail {
namespace {

struct Settings {
  std::string target;  // a point's name, or "*"
  uint64_t at = 0;     // the passing that ends the process; 0: never
  int log_fd = -1;
  std::mutex mutex;
  uint64_t passed = 0;
};

Settings& TheSettings() {
  static Settings settings;
  return settings;
}

void WriteAll(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

void SetTarget(Settings& s, const std::string& spec) {
  const size_t sep = spec.rfind('@');
  s.target = spec.substr(0, sep);
  s.at = sep == std::string::npos ? 1 : std::strtoull(spec.c_str() + sep + 1, nullptr, 10);
}

bool ArmFromEnvironment() {
  Settings& s = TheSettings();
  if (const char* at = std::getenv("IMAGERELAY_FAIL_AT"); at && *at) SetTarget(s, at);
  if (const char* log = std::getenv("IMAGERELAY_FAIL_LOG"); log && *log) {
    s.log_fd = ::open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  }
  return s.at != 0 || s.log_fd >= 0;
}

}  // namespace

std::atomic<bool> armed{ArmFromEnvironment()};

void ArmInThisProcess(const std::string& spec) {
  Settings& s = TheSettings();
  {
    std::lock_guard lock(s.mutex);
    SetTarget(s, spec);
    s.passed = 0;
  }
  armed.store(true);
}

void Pass(std::string_view name) {
  Settings& s = TheSettings();
  std::lock_guard lock(s.mutex);
  if (s.log_fd >= 0) WriteAll(s.log_fd, std::string(name) + "\n");
  if (s.at == 0 || (s.target != "*" && s.target != name)) return;
  if (++s.passed < s.at) return;
  WriteAll(2, "imagerelay: fail point " + std::string(name) + " reached; the process ends here\n");
  ::_exit(kFailPointExitCode);
}

}  // namespace imagerelay::fail_point_detail
