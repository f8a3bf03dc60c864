#include "net/http_client.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "base/retry.hpp"
#include "base/url_redaction.hpp"

namespace imagerelay {
namespace {

constexpr size_t kMaxIdleHandles = 64;

struct CurlSlistDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};
using Slist = std::unique_ptr<curl_slist, CurlSlistDeleter>;

struct CurlEasyDeleter {
  void operator()(CURL* curl) const { curl_easy_cleanup(curl); }
};

// State one request shares with the libcurl callbacks.
struct Exchange {
  const HttpRequest* request = nullptr;
  HttpResponse* response = nullptr;
  const CancelToken* cancel = nullptr;
  CURL* curl = nullptr;
  size_t sent = 0;
  bool too_large = false;
  bool cancelled = false;
};

size_t OnWrite(char* data, size_t size, size_t n, void* user) {
  auto* ex = static_cast<Exchange*>(user);
  size_t len = size * n;
  if (ex->request->on_body) {
    long status = ex->response->status;  // the test transport's (SetHttpTransportForTesting)
    if (ex->curl) curl_easy_getinfo(ex->curl, CURLINFO_RESPONSE_CODE, &status);
    if (ex->request->on_body(status, std::span(reinterpret_cast<const std::byte*>(data), len))) {
      return len;
    }
    ex->response->stopped = true;
    return 0;
  }
  size_t have = ex->request->sink ? ex->request->sink->size() : ex->response->body.size();
  if (ex->request->max_body && have + len > ex->request->max_body) {
    ex->too_large = true;
    return 0;
  }
  if (ex->request->sink) {
    auto* bytes = reinterpret_cast<const std::byte*>(data);
    ex->request->sink->insert(ex->request->sink->end(), bytes, bytes + len);
  } else {
    ex->response->body.append(data, len);
  }
  return len;
}

size_t OnRead(char* out, size_t size, size_t n, void* user) {
  auto* ex = static_cast<Exchange*>(user);
  const auto& body = ex->request->body;
  size_t len = std::min(size * n, body.size() - ex->sent);
  std::memcpy(out, body.data() + ex->sent, len);
  ex->sent += len;
  return len;
}

// libcurl rewinds an upload when a reused connection turns out dead.
int OnSeek(void* user, curl_off_t offset, int origin) {
  auto* ex = static_cast<Exchange*>(user);
  if (origin != SEEK_SET || offset < 0 || static_cast<size_t>(offset) > ex->request->body.size()) {
    return CURL_SEEKFUNC_CANTSEEK;
  }
  ex->sent = static_cast<size_t>(offset);
  return CURL_SEEKFUNC_OK;
}

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* ex = static_cast<Exchange*>(user);
  size_t len = size * n;
  std::string_view line(data, len);
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.remove_suffix(1);
  if (line.starts_with("HTTP/")) {
    ex->response->headers.clear();  // a new response (after 100 Continue or a redirect)
    return len;
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return len;
  std::string name(line.substr(0, colon));
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string_view value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  ex->response->headers.emplace_back(std::move(name), std::string(value));
  return len;
}

int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* ex = static_cast<Exchange*>(user);
  if (ex->cancel && ex->cancel->cancelled()) {
    ex->cancelled = true;
    return 1;
  }
  return 0;
}

// The URL for messages: no query string (a presigned one is secret), no password.
std::string ShownUrl(const std::string& url) { return RedactUrl(url.substr(0, url.find('?'))); }

// SetHttpTransportForTesting's stand-in; null in production.
std::mutex transport_mutex;
std::shared_ptr<const HttpTransport> test_transport;

std::shared_ptr<const HttpTransport> TestTransport() {
  std::lock_guard lock(transport_mutex);
  return test_transport;
}

// PerformOnce through the stand-in: its answer goes through libcurl's callbacks above.
HttpResponse PerformThrough(const HttpTransport& transport, const HttpRequest& request,
                            const CancelToken* cancel) {
  HttpResponse response;
  Exchange ex{&request, &response, cancel, nullptr};
  bool cut = false;  // a callback refused a piece: libcurl's CURLE_WRITE_ERROR
  const HttpAnswerHeader header = [&](std::string_view line) {
    if (line.starts_with("HTTP/")) {
      const size_t space = line.find(' ');
      const std::string_view code =
          space == std::string_view::npos ? std::string_view() : line.substr(space + 1, 3);
      if (code.size() != 3 ||
          !std::all_of(code.begin(), code.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        throw TransientError(request.method + " " + ShownUrl(request.url) + ": weird server reply");
      }
      response.status = std::stol(std::string(code));
    }
    std::string copy(line);
    OnHeader(copy.data(), 1, copy.size(), &ex);
  };
  const HttpAnswerBody body = [&](std::span<const std::byte> piece) {
    if (cut || OnProgress(&ex, 0, 0, 0, 0) != 0) return false;
    std::string copy(reinterpret_cast<const char*>(piece.data()), piece.size());
    cut = OnWrite(copy.data(), 1, copy.size(), &ex) != copy.size();
    return !cut;
  };
  transport(request, header, body);
  if (cut && response.stopped) return response;
  if (ex.cancelled) throw Cancelled{};
  if (ex.too_large) {
    throw TransientError(request.method + " " + ShownUrl(request.url) +
                         ": response larger than the " + std::to_string(request.max_body) +
                         " bytes expected");
  }
  return response;
}

}  // namespace

struct HttpClient::Handle {
  std::unique_ptr<CURL, CurlEasyDeleter> curl;
};

void EnsureCurlGlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

bool IsTransientStatus(long status) {
  return status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
}

std::string HttpResponse::Header(const std::string& name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) return v;
  }
  return "";
}

HttpClient::HttpClient(HttpOptions options) : options_(std::move(options)) {
  EnsureCurlGlobalInit();
}

HttpClient::~HttpClient() = default;

std::unique_ptr<HttpClient::Handle> HttpClient::Take() {
  {
    std::lock_guard lock(mutex_);
    if (!idle_.empty()) {
      auto handle = std::move(idle_.back());
      idle_.pop_back();
      return handle;
    }
  }
  auto handle = std::make_unique<Handle>();
  handle->curl.reset(curl_easy_init());
  if (!handle->curl) throw TransientError("cannot create an HTTP handle (out of memory?)");
  return handle;
}

void HttpClient::Give(std::unique_ptr<Handle> handle) {
  std::lock_guard lock(mutex_);
  if (idle_.size() < kMaxIdleHandles) idle_.push_back(std::move(handle));
}

void HttpClient::SleepBackoff(int failed_attempts, const CancelToken* cancel) const {
  if (TestTransport()) {
    if (cancel && cancel->cancelled()) throw Cancelled{};
    return;
  }
  thread_local std::mt19937 rng{std::random_device{}()};
  const RetryPolicy policy{options_.attempts, options_.backoff_initial_ms, 5'000};
  if (!SleepWhile(policy.Backoff(failed_attempts, rng),
                  [&] { return cancel == nullptr || !cancel->cancelled(); })) {
    throw Cancelled{};
  }
}

void SetHttpTransportForTesting(HttpTransport transport) {
  std::lock_guard lock(transport_mutex);
  test_transport =
      transport ? std::make_shared<const HttpTransport>(std::move(transport)) : nullptr;
}

HttpResponse HttpClient::PerformOnce(const HttpRequest& request, const CancelToken* cancel) {
  if (cancel && cancel->cancelled()) throw Cancelled{};
  if (auto transport = TestTransport()) return PerformThrough(*transport, request, cancel);
  std::unique_ptr<Handle> handle = Take();
  CURL* curl = handle->curl.get();
  curl_easy_reset(curl);  // keeps the handle's live connections

  HttpResponse response;
  Exchange ex{&request, &response, cancel, curl};
  Slist headers;
  auto add_header = [&](const std::string& line) {
    curl_slist* next = curl_slist_append(headers.get(), line.c_str());
    if (!next) throw TransientError("out of memory building an HTTP request");
    (void)headers.release();
    headers.reset(next);
  };
  for (const auto& [name, value] : request.headers) add_header(name + ": " + value);
  add_header("Expect:");  // no 100-continue round trip (and no stall on servers without it)

  char error[CURL_ERROR_SIZE] = {};
  curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, options_.connect_timeout_ms);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, options_.low_speed_limit);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, options_.low_speed_time_s);
  if (options_.total_timeout_ms > 0)
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, options_.total_timeout_ms);
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, options_.verify_tls ? 1L : 0L);
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, options_.verify_tls ? 2L : 0L);
  if (!options_.ca_bundle.empty())
    curl_easy_setopt(curl, CURLOPT_CAINFO, options_.ca_bundle.c_str());
  curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(curl, CURLOPT_BUFFERSIZE, 256L * 1024);
  curl_easy_setopt(curl, CURLOPT_UPLOAD_BUFFERSIZE, 2L * 1024 * 1024);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, OnWrite);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &ex);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &ex);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, OnProgress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &ex);

  if (request.method == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else if (request.method == "PUT" || request.method == "POST") {
    curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(curl, CURLOPT_READFUNCTION, OnRead);
    curl_easy_setopt(curl, CURLOPT_READDATA, &ex);
    curl_easy_setopt(curl, CURLOPT_SEEKFUNCTION, OnSeek);
    curl_easy_setopt(curl, CURLOPT_SEEKDATA, &ex);
    curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(request.body.size()));
    if (request.method == "POST") curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "POST");
  } else if (request.method != "GET") {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  }

  CURLcode rc = curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
  if (rc == CURLE_WRITE_ERROR && response.stopped) return response;  // not pooled: cut short
  if (rc != CURLE_OK) {
    // A handle whose transfer failed may hold a broken connection: do not pool it.
    if (ex.cancelled) throw Cancelled{};
    std::string what = request.method + " " + ShownUrl(request.url) + ": ";
    if (ex.too_large) {
      throw TransientError(what + "response larger than the " + std::to_string(request.max_body) +
                           " bytes expected");
    }
    what += error[0] ? error : curl_easy_strerror(rc);
    switch (rc) {
      case CURLE_PEER_FAILED_VERIFICATION:
      case CURLE_SSL_CACERT_BADFILE: throw TlsVerificationError(what);
      case CURLE_UNSUPPORTED_PROTOCOL:
      case CURLE_URL_MALFORMAT:
        // Permanent: retrying cannot help. Still a TransientError type would loop; say so.
        throw std::runtime_error(what);
      default: throw TransientError(what);
    }
  }
  // A body shorter than Content-Length gives CURLE_PARTIAL_FILE above; a HEAD has none.
  Give(std::move(handle));
  return response;
}

}  // namespace imagerelay
