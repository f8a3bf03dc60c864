// AWS Signature Version 4 for S3 (DESIGN.md §5), written in the project and tested against
// AWS's published examples: canonical request, string to sign, signing key, Authorization.
// Pure functions: no I/O, no clock (the caller passes the time).
#pragma once

#include <array>
#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace imagerelay::sigv4 {

// Access key id, secret and optional session token. Never printed: describe() shows the key
// id only.
struct Credentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // AWS_SESSION_TOKEN, sent as x-amz-security-token if set
  bool empty() const { return access_key_id.empty() || secret_access_key.empty(); }
};

// The parts of a request that are signed.
struct Request {
  std::string method;  // GET, PUT, HEAD, DELETE, POST
  std::string path;    // the raw (unencoded) path, starting with '/'
  std::vector<std::pair<std::string, std::string>> query;    // raw names and values
  std::vector<std::pair<std::string, std::string>> headers;  // must include host
  std::string payload_hash;  // hex SHA-256 of the body, or UNSIGNED-PAYLOAD
};

inline constexpr const char* kEmptyPayloadHash =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
inline constexpr const char* kUnsignedPayload = "UNSIGNED-PAYLOAD";

// S3's URI encoding: unreserved A-Za-z0-9-_.~ kept, everything else %XX (uppercase); '/'
// kept unless encode_slash.
std::string UriEncode(std::string_view s, bool encode_slash);

// "20130524T000000Z" for a UTC time.
std::string AmzDate(std::time_t t);

std::string CanonicalRequest(const Request& request);
// "host;range;x-amz-date" of the request's headers.
std::string SignedHeaders(const Request& request);
std::string Scope(std::string_view date, std::string_view region, std::string_view service);
std::string StringToSign(std::string_view amz_date, std::string_view scope,
                         std::string_view canonical_request);
std::array<unsigned char, 32> SigningKey(std::string_view secret, std::string_view date,
                                         std::string_view region, std::string_view service);
std::string Signature(const std::array<unsigned char, 32>& key, std::string_view string_to_sign);

// The Authorization header value for `request`, whose headers must already hold host,
// x-amz-date (= amz_date), x-amz-content-sha256 and, with a session token,
// x-amz-security-token.
std::string Authorization(const Request& request, const Credentials& credentials,
                          std::string_view region, std::string_view amz_date,
                          std::string_view service = "s3");

std::string HexSha256(std::string_view data);

}  // namespace imagerelay::sigv4
