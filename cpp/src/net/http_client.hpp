// HTTP over libcurl for the S3 store and URL imports: a pool of easy handles (each keeps its
// connections alive, so a handle taken again reuses them), connect and low-speed timeouts,
// no `Expect: 100-continue` stalls, TLS verification on, cancel through the progress
// callback, and a classification of failures into transient (retry) and permanent.
// Perform may be called from many threads at once: each call takes its own handle.
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "imagerelay/cancel.hpp"
#include "imagerelay/error.hpp"

namespace imagerelay {

struct HttpRequest {
  std::string method = "GET";  // GET, HEAD, PUT, POST, DELETE
  std::string url;
  std::vector<std::pair<std::string, std::string>> headers;
  std::span<const std::byte> body;  // sent for PUT/POST (may be empty)
  // Where the response body goes: `*sink` if set, else HttpResponse::body.
  std::vector<std::byte>* sink = nullptr;
  // Refuse a response body larger than this (0 = no limit): guards memory.
  size_t max_body = 0;
  // Receives the body as it arrives, with the response's status, instead of `sink` or
  // HttpResponse::body. Returning false stops the transfer: PerformOnce then returns the
  // response so far with `stopped` set (a streamed import reads what it needs, no more).
  std::function<bool(long status, std::span<const std::byte> data)> on_body;
};

struct HttpResponse {
  long status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercased
  std::string body;                                          // when the request had no sink
  bool stopped = false;                                      // on_body ended the transfer early
  // The value of a header (lowercase name) or "".
  std::string Header(const std::string& name) const;
};

struct HttpOptions {
  long connect_timeout_ms = 10'000;
  long low_speed_limit = 1024;  // bytes/s below which a transfer counts as stalled...
  long low_speed_time_s = 15;   // ...for this long: then it fails (transient)
  long total_timeout_ms = 0;    // whole request, 0 = none
  bool verify_tls = true;
  std::string ca_bundle;         // PEM file of the CAs to trust instead of the system's
  int attempts = 3;              // tries for transient failures inside Request()
  int backoff_initial_ms = 100;  // doubled per attempt, full jitter
};

// The server's TLS certificate is not trusted (or the CA bundle cannot be read): permanent.
class TlsVerificationError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A failure to get any HTTP answer (timeout, reset, refused...): always transient.
bool IsTransientStatus(long status);  // 429, 500, 502, 503, 504
inline bool IsSuccessStatus(long status) { return status >= 200 && status < 300; }  // 2xx

class HttpClient {
 public:
  explicit HttpClient(HttpOptions options = {});
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // One attempt. Throws TransientError when no HTTP answer came (timeouts, resets, refused
  // connections, truncated bodies), Cancelled when `cancel` fired. Any HTTP status returns.
  HttpResponse PerformOnce(const HttpRequest& request, const CancelToken* cancel = nullptr);

  // Retries transport failures and transient statuses (429/5xx) up to options.attempts with
  // backoff (attempts 0 = options.attempts); returns the last response (which may still carry a
  // transient status) or throws the last TransientError. `prepare` is called before each attempt
  // (re-signing).
  template <typename Prepare>
  HttpResponse Request(HttpRequest& request, Prepare&& prepare, const CancelToken* cancel,
                       int attempts = 0);

  const HttpOptions& options() const { return options_; }
  void SleepBackoff(int failed_attempts, const CancelToken* cancel) const;

 private:
  struct Handle;
  std::unique_ptr<Handle> Take();
  void Give(std::unique_ptr<Handle> handle);

  HttpOptions options_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Handle>> idle_;
};

// Calls curl_global_init once per process (the Python module does it at import too).
void EnsureCurlGlobalInit();

// A stand-in for the network, for the fuzz targets (tests/fuzz/): while one is set, every
// PerformOnce in the process hands its request to it instead of libcurl. It answers through
// the code libcurl's callbacks run: `header` for each raw header line, the status line
// ("HTTP/1.1 206 Partial Content") first, then `body` for each piece of the body (false: the
// client stopped reading). It throws TransientError for a transfer that failed (libcurl fails
// a status line without a 3-digit code so too). Backoff does not sleep while one is set.
// Never set outside tests.
using HttpAnswerHeader = std::function<void(std::string_view line)>;
using HttpAnswerBody = std::function<bool(std::span<const std::byte> piece)>;
using HttpTransport = std::function<void(const HttpRequest& request, const HttpAnswerHeader& header,
                                         const HttpAnswerBody& body)>;
// Sets (or, with an empty function, clears) the stand-in.
void SetHttpTransportForTesting(HttpTransport transport);

template <typename Prepare>
HttpResponse HttpClient::Request(HttpRequest& request, Prepare&& prepare, const CancelToken* cancel,
                                 int attempts) {
  attempts = std::max(1, attempts > 0 ? attempts : options_.attempts);
  for (int attempt = 1;; ++attempt) {
    prepare(request);
    if (request.sink) request.sink->clear();
    try {
      HttpResponse response = PerformOnce(request, cancel);
      if (!IsTransientStatus(response.status) || attempt >= attempts) return response;
    } catch (const TransientError&) {
      if (attempt >= attempts) throw;
    }
    SleepBackoff(attempt, cancel);
  }
}

}  // namespace imagerelay
