// Signed requests to one S3 bucket: the parsed s3:// location, the credentials and the HTTP
// client, shared by the S3 store (s3_store.hpp) and s3:// imports (url_source.cpp).
// URI: s3://bucket[/prefix][?endpoint=https://host:port&region=us-east-1&addressing=path|virtual
//      &verify_tls=false&ca_bundle=/path/ca.pem&low_speed_time=<seconds>]
// TLS is verified against the system's CAs, or ca_bundle (else AWS_CA_BUNDLE) when given.
// Requests are signed with AWS Signature V4 (sigv4.hpp); credentials are the caller's if
// given, else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, else none
// (anonymous). No message or log ever shows a secret.
// All methods may be called from several threads at once.
#pragma once

#include <ctime>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "net/http_client.hpp"
#include "net/sigv4.hpp"

namespace imagerelay {

// A parsed s3:// URI.
struct S3Location {
  std::string bucket;
  std::string prefix;  // without leading or trailing '/', may be empty
  std::string scheme;  // http or https
  std::string host;    // host[:port] of the endpoint
  std::string region = "us-east-1";
  bool virtual_host = false;  // bucket.host instead of host/bucket
  bool verify_tls = true;
  std::string ca_bundle;      // PEM file of CAs to trust (ca_bundle=, else AWS_CA_BUNDLE)
  long low_speed_time_s = 0;  // a stall this long fails a request (0: the HTTP default)
  std::string display;        // s3://bucket/prefix (no query)
};

// Parses an s3:// URI; throws ValidationError(InvalidParameter) naming what is wrong.
S3Location ParseS3Uri(const std::string& uri);

class S3Client {
 public:
  // Empty credentials: taken from the environment (or anonymous if none there). The URI's
  // TLS and low-speed settings override `http`'s.
  explicit S3Client(S3Location location, sigv4::Credentials credentials = {},
                    HttpOptions http = {});

  // A request on an object key (below the bucket, prefix included). `sink` receives the
  // body of a GET.
  struct Call {
    std::string method = "GET";
    std::string key;  // full object key, or "" for the bucket
    std::vector<std::pair<std::string, std::string>> query;
    std::vector<std::pair<std::string, std::string>> headers;
    std::span<const std::byte> body;
    std::string payload_hash;  // "" = hash of body
    std::vector<std::byte>* sink = nullptr;
    size_t max_body = 0;
    std::function<bool(long, std::span<const std::byte>)> on_body;  // see HttpRequest
    bool retry = true;  // retry transient failures inside the HTTP layer...
    int attempts = 6;   // ...this many times in all
  };
  // Sends `call`, signed again before each attempt.
  HttpResponse Perform(Call call, const CancelToken* cancel = nullptr);
  // The request `call` makes when signed at `now`: method, URL, headers and body (Perform
  // adds where the answer goes).
  HttpRequest Signed(const Call& call, std::time_t now) const;

  const S3Location& location() const { return location_; }
  // Same endpoint, region and credentials: one service to CopyObject between the buckets.
  bool SameServiceAs(const S3Client& other) const;

  // "403 AccessDenied: Access Denied" from an S3 error response (never the request).
  static std::string Reason(const HttpResponse& response);
  // Error codes S3 sends (also in the body of a 200 answer to CopyObject) worth a retry.
  static bool IsTransientCode(std::string_view code);

 private:
  S3Location location_;
  sigv4::Credentials credentials_;
  HttpClient http_;
};

// Every <tag>text</tag> in an S3 answer, unescaped. Enough for the flat answers S3 gives.
std::vector<std::string> XmlAll(std::string_view xml, std::string_view tag);
// The first of them, or "".
std::string XmlFirst(std::string_view xml, std::string_view tag);

}  // namespace imagerelay
