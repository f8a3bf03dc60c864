// ByteSource over an http(s):// or s3:// URL: the size from a HEAD, then ranged GETs of
// exactly what import asks for (one chunk at a time), so nothing is copied to a temporary
// file. Transient failures are retried inside the HTTP layer; a server that ignores Range
// is refused with a clear message.
#include <cstring>

#include "http_client.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/image_io.hpp"
#include "s3_store.hpp"

namespace imagerelay {
namespace {

constexpr int kAttempts = 6;

std::string Shown(const std::string& url) {
  std::string out = url.substr(0, url.find('?'));
  return out.size() > 200 ? out.substr(0, 200) + "..." : out;
}

[[noreturn]] void Unreadable(const std::string& url, const std::string& why) {
  throw ValidationError(codes::kInvalidParameter,
                        "cannot read the import source " + Shown(url) + ": " + why);
}

uint64_t ParseLength(const HttpResponse& r) {
  std::string length = r.Header("content-length");
  if (length.empty()) return UINT64_MAX;
  return std::strtoull(length.c_str(), nullptr, 10);
}

class UrlSource : public ByteSource {
 public:
  explicit UrlSource(std::string url) : url_(std::move(url)) {
    if (url_.starts_with("s3://")) s3_ = std::make_unique<S3Store>(url_);
    HttpResponse head = Send("HEAD", 0, 0, nullptr);
    if (head.status == 404) Unreadable(url_, "no such object (404)");
    if (head.status < 200 || head.status >= 300) {
      Unreadable(url_, "the server answered " + S3Store::Reason(head));
    }
    size_ = ParseLength(head);
    if (size_ == UINT64_MAX) Unreadable(url_, "the server does not say its size (Content-Length)");
  }

  uint64_t size() const override { return size_; }
  bool IsHole(uint64_t, uint64_t) override { return false; }
  std::string describe() const override { return Shown(url_); }

  void ReadAt(uint64_t offset, std::byte* out, size_t len) override {
    if (len == 0) return;
    std::vector<std::byte> buffer;
    buffer.reserve(len);
    HttpResponse r = Send("GET", offset, len, &buffer);
    if (r.status == 200 && !(offset == 0 && len == size_)) {
      throw TransferError(codes::kTransferFailed,
                          "the server of " + Shown(url_) +
                              " ignores ranged reads (Range); it cannot be imported from");
    }
    if ((r.status != 206 && r.status != 200) || buffer.size() != len) {
      throw TransferError(codes::kTransferFailed,
                          "reading " + std::to_string(len) + " bytes at " + std::to_string(offset) +
                              " of " + Shown(url_) + " failed: " +
                              (r.status / 100 == 2 ? "short read of " + std::to_string(buffer.size()) + " bytes"
                                                   : S3Store::Reason(r)));
    }
    std::memcpy(out, buffer.data(), len);
  }

 private:
  HttpResponse Send(const std::string& method, uint64_t offset, size_t len,
                    std::vector<std::byte>* sink) {
    std::vector<std::pair<std::string, std::string>> headers;
    if (len) {
      headers.emplace_back("Range", "bytes=" + std::to_string(offset) + "-" +
                                        std::to_string(offset + len - 1));
    }
    try {
      for (int attempt = 1;; ++attempt) {
        HttpResponse r;
        if (s3_) {
          S3Store::Call call;
          call.method = method;
          call.key = s3_->location().prefix;
          call.headers = headers;
          call.sink = sink;
          call.max_body = len;
          call.attempts = kAttempts;
          r = s3_->Perform(call);
        } else {
          HttpRequest request;
          request.method = method;
          request.url = url_;
          request.sink = sink;
          request.max_body = len;
          r = http_.Request(request, [&](HttpRequest& req) { req.headers = headers; }, nullptr,
                            kAttempts);
        }
        // A body cut short (without a transport error) is retried too.
        if (!sink || r.status / 100 != 2 || sink->size() == len || attempt >= kAttempts) return r;
        http_.SleepBackoff(attempt, nullptr);
      }
    } catch (const TransientError& e) {
      throw TransferError(codes::kTransferFailed, std::string("import source unreachable: ") + e.what());
    }
  }

  std::string url_;
  std::unique_ptr<S3Store> s3_;
  HttpClient http_;
  uint64_t size_ = 0;
};

}  // namespace

bool IsUrlSource(const std::string& source) {
  return source.starts_with("http://") || source.starts_with("https://") ||
         source.starts_with("s3://");
}

std::unique_ptr<ByteSource> OpenUrlSource(const std::string& url) {
  try {
    return std::make_unique<UrlSource>(url);
  } catch (const TransferError& e) {
    throw ValidationError(codes::kInvalidParameter, e.message());
  } catch (const std::runtime_error& e) {
    if (dynamic_cast<const Error*>(&e)) throw;
    Unreadable(url, e.what());
  }
}

std::unique_ptr<ByteSource> OpenImportSource(const std::string& source) {
  return IsUrlSource(source) ? OpenUrlSource(source) : OpenFileSource(source);
}

}  // namespace imagerelay
