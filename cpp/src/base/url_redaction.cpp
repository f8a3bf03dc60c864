#include "base/url_redaction.hpp"

#include <algorithm>
#include <array>
#include <cctype>

namespace imagerelay {
namespace {

constexpr std::string_view kHidden = "***";

// Setting names (lower case) that carry a credential somewhere: AWS's X-Amz-Signature,
// X-Amz-Credential and X-Amz-Security-Token, Azure's sig, GCS's X-Goog-Signature, tokens,
// API keys, passwords.
bool SecretSetting(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  static constexpr std::array<std::string_view, 8> kParts = {
      "sig", "token", "credential", "secret", "password", "passwd", "key", "auth"};
  return std::any_of(kParts.begin(), kParts.end(),
                     [&](std::string_view part) { return lower.find(part) != std::string::npos; });
}

}  // namespace

std::string RedactUrl(std::string_view url) {
  const size_t scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) return std::string(url);
  const size_t authority = scheme_end + 3;
  const size_t authority_end = std::min(url.find_first_of("/?#", authority), url.size());
  std::string out(url.substr(0, authority));
  std::string_view host = url.substr(authority, authority_end - authority);
  if (size_t at = host.rfind('@'); at != std::string_view::npos) {
    std::string_view user = host.substr(0, at);
    size_t colon = user.find(':');
    out += colon == std::string_view::npos ? std::string(kHidden)
                                           : std::string(user.substr(0, colon + 1)) + "***";
    host = host.substr(at);  // from the '@'
  }
  out += host;
  std::string_view rest = url.substr(authority_end);
  const size_t query = rest.find('?');
  out += rest.substr(0, query);
  if (query == std::string_view::npos) return out;
  rest = rest.substr(query + 1);
  const size_t fragment = std::min(rest.find('#'), rest.size());
  std::string_view settings = rest.substr(0, fragment);
  out += '?';
  for (bool first = true;; first = false) {
    const size_t amp = settings.find('&');
    const std::string_view param = settings.substr(0, amp);
    if (!first) out += '&';
    const size_t eq = param.find('=');
    if (eq != std::string_view::npos && SecretSetting(param.substr(0, eq))) {
      out += std::string(param.substr(0, eq + 1)) + std::string(kHidden);
    } else {
      out += param;
    }
    if (amp == std::string_view::npos) break;
    settings = settings.substr(amp + 1);
  }
  out += rest.substr(fragment);
  return out;
}

}  // namespace imagerelay
