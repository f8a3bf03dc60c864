#include "net/sigv4.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cctype>
#include <stdexcept>

#include "imagerelay/sha256.hpp"

namespace imagerelay::sigv4 {
namespace {

constexpr char kHex[] = "0123456789abcdef";

std::string Hex(const unsigned char* data, size_t len) {
  std::string out(len * 2, '0');
  for (size_t i = 0; i < len; ++i) {
    out[2 * i] = kHex[data[i] >> 4];
    out[2 * i + 1] = kHex[data[i] & 0xf];
  }
  return out;
}

std::array<unsigned char, 32> Hmac(std::string_view key, std::string_view data) {
  std::array<unsigned char, 32> out{};
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
            reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), &len) ||
      len != out.size()) {
    throw std::runtime_error("HMAC-SHA256 failed");
  }
  return out;
}

std::string_view View(const std::array<unsigned char, 32>& a) {
  return {reinterpret_cast<const char*>(a.data()), a.size()};
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Trims and collapses runs of spaces, as the canonical headers want.
std::string TrimValue(std::string_view v) {
  std::string out;
  bool space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t') {
      space = true;
      continue;
    }
    if (space && !out.empty()) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> SortedHeaders(const Request& request) {
  std::vector<std::pair<std::string, std::string>> headers;
  for (const auto& [name, value] : request.headers) {
    std::string lname = Lower(TrimValue(name));
    std::string v = TrimValue(value);
    auto it = std::find_if(headers.begin(), headers.end(),
                           [&](const auto& h) { return h.first == lname; });
    if (it != headers.end()) {
      it->second += "," + v;
    } else {
      headers.emplace_back(std::move(lname), std::move(v));
    }
  }
  std::sort(headers.begin(), headers.end());
  return headers;
}

}  // namespace

std::string UriEncode(std::string_view s, bool encode_slash) {
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~' || (c == '/' && !encode_slash)) {
      out += ch;
    } else {
      out += '%';
      out += "0123456789ABCDEF"[c >> 4];
      out += "0123456789ABCDEF"[c & 0xf];
    }
  }
  return out;
}

std::string AmzDate(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

std::string SignedHeaders(const Request& request) {
  std::string out;
  for (const auto& [name, value] : SortedHeaders(request)) {
    if (!out.empty()) out += ';';
    out += name;
  }
  return out;
}

std::string CanonicalRequest(const Request& request) {
  std::string out = request.method + "\n";
  out += UriEncode(request.path.empty() ? "/" : request.path, false) + "\n";
  std::vector<std::pair<std::string, std::string>> query;
  for (const auto& [k, v] : request.query)
    query.emplace_back(UriEncode(k, true), UriEncode(v, true));
  std::sort(query.begin(), query.end());
  for (size_t i = 0; i < query.size(); ++i) {
    if (i) out += '&';
    out += query[i].first + "=" + query[i].second;
  }
  out += "\n";
  for (const auto& [name, value] : SortedHeaders(request)) out += name + ":" + value + "\n";
  out += "\n";
  out += SignedHeaders(request) + "\n";
  out += request.payload_hash;
  return out;
}

std::string Scope(std::string_view date, std::string_view region, std::string_view service) {
  return std::string(date) + "/" + std::string(region) + "/" + std::string(service) +
         "/aws4_request";
}

std::string StringToSign(std::string_view amz_date, std::string_view scope,
                         std::string_view canonical_request) {
  return "AWS4-HMAC-SHA256\n" + std::string(amz_date) + "\n" + std::string(scope) + "\n" +
         HexSha256(canonical_request);
}

std::array<unsigned char, 32> SigningKey(std::string_view secret, std::string_view date,
                                         std::string_view region, std::string_view service) {
  auto k_date = Hmac("AWS4" + std::string(secret), date);
  auto k_region = Hmac(View(k_date), region);
  auto k_service = Hmac(View(k_region), service);
  return Hmac(View(k_service), "aws4_request");
}

std::string Signature(const std::array<unsigned char, 32>& key, std::string_view string_to_sign) {
  auto sig = Hmac(View(key), string_to_sign);
  return Hex(sig.data(), sig.size());
}

std::string Authorization(const Request& request, const Credentials& credentials,
                          std::string_view region, std::string_view amz_date,
                          std::string_view service) {
  std::string_view date = amz_date.substr(0, 8);
  std::string scope = Scope(date, region, service);
  std::string sts = StringToSign(amz_date, scope, CanonicalRequest(request));
  std::string sig =
      Signature(SigningKey(credentials.secret_access_key, date, region, service), sts);
  return "AWS4-HMAC-SHA256 Credential=" + credentials.access_key_id + "/" + scope +
         ",SignedHeaders=" + SignedHeaders(request) + ",Signature=" + sig;
}

std::string HexSha256(std::string_view data) { return Sha256Hex(data.data(), data.size()); }

}  // namespace imagerelay::sigv4
