// AWS Signature V4 (net/sigv4.cpp) over what reaches it from outside: object keys (from
// listings and image ids), query values (continuation tokens a server sent), header values
// and the region of a store URI. Input lines: method, path, then "name=value" query lines up
// to an empty line, "Name: value" header lines up to an empty line, then the payload hash,
// the region and the time. The signature must come out well formed, the same twice, and
// never show the secret; UriEncode must leave only unreserved characters and escapes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <string>

#include "fuzz_support.hpp"
#include "net/sigv4.hpp"

namespace imagerelay::fuzz {
namespace {

bool Unreserved(char c, bool slash_ok) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == '~' || (slash_ok && c == '/');
}

void CheckEncoded(const std::string& raw, bool encode_slash) {
  const std::string encoded = sigv4::UriEncode(raw, encode_slash);
  std::string decoded;
  for (size_t i = 0; i < encoded.size(); ++i) {
    if (encoded[i] == '%') {
      Require(i + 2 < encoded.size(), "a cut escape");
      decoded += static_cast<char>(std::strtol(encoded.substr(i + 1, 2).c_str(), nullptr, 16));
      i += 2;
    } else {
      Require(Unreserved(encoded[i], !encode_slash), "UriEncode left a reserved character");
      decoded += encoded[i];
    }
  }
  Require(decoded == raw, "UriEncode does not decode back");
}

}  // namespace
}  // namespace imagerelay::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imagerelay;
  using namespace imagerelay::fuzz;
  std::string_view text = AsText(data, size);
  sigv4::Request request;
  request.method = TakeLine(text);
  request.path = TakeLine(text);
  for (std::string_view line = TakeLine(text); !line.empty(); line = TakeLine(text)) {
    const size_t eq = line.find('=');
    request.query.emplace_back(line.substr(0, eq),
                               eq == std::string_view::npos ? "" : line.substr(eq + 1));
  }
  request.headers.emplace_back("host", "bucket.s3.example");
  for (std::string_view line = TakeLine(text); !line.empty(); line = TakeLine(text)) {
    const size_t colon = line.find(':');
    request.headers.emplace_back(line.substr(0, colon),
                                 colon == std::string_view::npos ? "" : line.substr(colon + 1));
  }
  request.payload_hash = TakeLine(text);
  const std::string region(TakeLine(text));
  const std::string when(TakeLine(text));
  const std::time_t now = static_cast<std::time_t>(std::strtoll(when.c_str(), nullptr, 10));

  CheckEncoded(request.path, false);
  CheckEncoded(request.path, true);
  for (const auto& [name, value] : request.query) CheckEncoded(value, true);

  OnlyStableErrors([&] {
    const sigv4::Credentials credentials{"AKIDFUZZEXAMPLE", "fuzz/secret+KEY=never-shown", ""};
    const std::string amz_date = sigv4::AmzDate(now);
    const std::string auth = sigv4::Authorization(request, credentials, region, amz_date);
    Require(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDFUZZEXAMPLE/"),
            "a malformed Authorization");
    // (Unless the input holds it itself, as the region or a header: they are signed as given.)
    Require(AsText(data, size).find(credentials.secret_access_key) != std::string_view::npos ||
                auth.find(credentials.secret_access_key) == std::string::npos,
            "the Authorization shows the secret");
    const size_t sig = auth.rfind(",Signature=");
    Require(sig != std::string::npos && auth.size() - sig - 11 == 64, "a signature not 64 hex");
    Require(auth == sigv4::Authorization(request, credentials, region, amz_date),
            "signing twice gives two signatures");
    (void)sigv4::CanonicalRequest(request);
  });
  return 0;
}
