#include "engine/lease.hpp"

#include <signal.h>

#include <cerrno>
#include <charconv>

namespace imagerelay {
namespace {

// Followed by the image id.
constexpr std::string_view kImportKeyPrefix = "import:";

}  // namespace

std::string Lease::Encode() const { return owner + "|" + std::to_string(expires_us); }

Lease Lease::Decode(std::string_view text) {
  const size_t bar = text.rfind('|');
  if (bar == std::string_view::npos) return {};
  Lease lease;
  const std::string_view digits = text.substr(bar + 1);
  const auto [end, ec] =
      std::from_chars(digits.data(), digits.data() + digits.size(), lease.expires_us);
  if (ec != std::errc() || end != digits.data() + digits.size()) return {};
  lease.owner = std::string(text.substr(0, bar));
  return lease;
}

std::string ImportKey(std::string_view image_id) {
  return std::string(kImportKeyPrefix) + std::string(image_id);
}

bool IsImportKey(std::string_view key) { return key.starts_with(kImportKeyPrefix); }

Lease ImportLease(CatalogTx& tx, std::string_view image_id) {
  return Lease::Decode(tx.GetSetting(ImportKey(image_id)).value_or(""));
}

void PutImportLease(CatalogTx& tx, std::string_view image_id, const Lease& lease) {
  // An ended lease is kept as "" (as homes have always kept it): nobody's.
  tx.PutSetting(ImportKey(image_id), lease.owner.empty() ? "" : lease.Encode());
}

bool LeaseHolderAlive(const Lease& lease, TimeUs now, std::string_view host,
                      std::string_view self) {
  const std::string& owner = lease.owner;
  if (owner.empty() || lease.expires_us < now) return false;
  // "<host>:<pid>:<nonce>": a holder on this host whose process is gone is dead at once.
  const size_t first = owner.find(':');
  const size_t second = owner.find(':', first + 1);
  if (first == std::string::npos || second == std::string::npos) return true;
  if (std::string_view(owner).substr(0, first) != host) return true;
  if (owner == self) return true;
  pid_t pid = 0;
  const std::string_view digits = std::string_view(owner).substr(first + 1, second - first - 1);
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), pid);
  if (ec != std::errc() || pid <= 0) return true;  // not ours to judge
  return !(::kill(pid, 0) != 0 && errno == ESRCH);
}

}  // namespace imagerelay
