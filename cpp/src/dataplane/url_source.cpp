// ByteSource over an http(s):// or s3:// URL, without a temporary copy. The size comes from
// a HEAD. A server that takes ranges (Accept-Ranges: bytes; S3 always does) is read with
// up to kParallelRanges ranged GETs in flight ahead of the reader, in the order import asks
// for them (so kParallelRanges buffers at most); any other server, or one that answers a
// ranged GET with 200, is read with one streamed GET through a bounded buffer. Transient
// failures are retried with backoff; a broken stream restarts and skips what was read.
#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "base/decimal.hpp"
#include "base/url_redaction.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/image_io.hpp"
#include "net/http_client.hpp"
#include "net/s3_client.hpp"

namespace imagerelay {
namespace {

constexpr int kAttempts = 6;
constexpr size_t kParallelRanges = 4;
constexpr size_t kStreamBuffer = 8ULL << 20;  // bytes a stream may run ahead of the reader
constexpr size_t kMaxErrorBody = 4096;

std::string Shown(const std::string& url) {
  std::string out = RedactUrl(url.substr(0, url.find('?')));
  return out.size() > 200 ? out.substr(0, 200) + "..." : out;
}

[[noreturn]] void Unreadable(const std::string& url, const std::string& why) {
  throw ValidationError(codes::kInvalidParameter,
                        "cannot read the import source " + Shown(url) + ": " + why);
}

// UINT64_MAX when the answer has no Content-Length or one that is not a number.
uint64_t ParseLength(const HttpResponse& r) {
  return ParseDecimal(r.Header("content-length")).value_or(UINT64_MAX);
}

using BodyFn = std::function<bool(long, std::span<const std::byte>)>;

// One request to the URL: signed for s3://, plain for http(s)://. No retries here.
class UrlEndpoint {
 public:
  explicit UrlEndpoint(std::string url) : url_(std::move(url)), http_(Options()) {
    if (url_.starts_with("s3://")) s3_ = std::make_unique<S3Client>(ParseS3Uri(url_));
  }
  const std::string& url() const { return url_; }
  const HttpClient& http() const { return http_; }

  HttpResponse Send(const std::string& method, std::optional<std::pair<uint64_t, size_t>> range,
                    BodyFn on_body, const CancelToken* cancel, int attempts = 1) {
    std::vector<std::pair<std::string, std::string>> headers;
    if (range) {
      headers.emplace_back("Range", "bytes=" + std::to_string(range->first) + "-" +
                                        std::to_string(range->first + range->second - 1));
    }
    if (s3_) {
      S3Client::Call call;
      call.method = method;
      call.key = s3_->location().prefix;
      call.headers = headers;
      call.on_body = std::move(on_body);
      call.max_body = kMaxErrorBody;  // only error documents land in the body
      call.attempts = attempts;
      call.retry = attempts > 1;
      return s3_->Perform(call, cancel);
    }
    HttpRequest request;
    request.method = method;
    request.url = url_;
    request.on_body = std::move(on_body);
    request.max_body = kMaxErrorBody;
    return http_.Request(
        request, [&](HttpRequest& r) { r.headers = headers; }, cancel, attempts);
  }

 private:
  // http(s) URLs trust CURL_CA_BUNDLE when set (curl's own variable); s3:// as S3Client does.
  static HttpOptions Options() {
    HttpOptions options;
    if (const char* bundle = std::getenv("CURL_CA_BUNDLE")) options.ca_bundle = bundle;
    return options;
  }

  std::string url_;
  std::unique_ptr<S3Client> s3_;
  HttpClient http_;
};

// Keeps the start of an error answer's body, for S3Client::Reason.
void AppendErrorBody(std::string& body, std::span<const std::byte> data) {
  size_t room = kMaxErrorBody - std::min(kMaxErrorBody, body.size());
  body.append(reinterpret_cast<const char*>(data.data()), std::min(data.size(), room));
}

// One streamed GET feeding the reader through a bounded queue, on its own thread.
class StreamReader {
 public:
  StreamReader(UrlEndpoint& endpoint, uint64_t size, const CancelToken* cancel)
      : endpoint_(endpoint), size_(size), stop_(cancel) {
    thread_ = std::thread([this] { Run(); });
  }
  ~StreamReader() {
    {
      std::lock_guard lock(mu_);
      closing_ = true;
    }
    stop_.Cancel();
    cv_.notify_all();
    thread_.join();
  }

  // Reads the next bytes of the stream at `offset` (never before what was read already).
  void Read(uint64_t offset, std::byte* out, size_t len) {
    std::unique_lock lock(mu_);
    while (len > 0) {
      cv_.wait(lock, [&] { return queued_ > 0 || error_ || done_; });
      if (queued_ == 0) {
        if (error_) std::rethrow_exception(error_);
        throw TransferError(codes::kTransferFailed,
                            "the stream of " + Shown(endpoint_.url()) + " ended early");
      }
      auto& front = pieces_.front();
      size_t n = std::min(len, front.size() - front_used_);
      if (position_ < offset) n = std::min<uint64_t>(n, offset - position_);  // skip
      if (position_ >= offset) {
        std::memcpy(out, front.data() + front_used_, n);
        out += n;
        len -= n;
        offset += n;
      }
      position_ += n;
      front_used_ += n;
      queued_ -= n;
      if (front_used_ == front.size()) {
        pieces_.pop_front();
        front_used_ = 0;
      }
      cv_.notify_all();
    }
  }

  uint64_t position() {
    std::lock_guard lock(mu_);
    return position_;
  }

 private:
  void Run() {
    uint64_t received = 0;  // over every attempt: a retry skips what came already
    for (int attempt = 1;; ++attempt) {
      uint64_t seen = 0;
      std::string error_body;
      try {
        HttpResponse r = endpoint_.Send(
            "GET", std::nullopt,
            [&](long status, std::span<const std::byte> data) {
              if (status != 200) {
                AppendErrorBody(error_body, data);
                return true;
              }
              size_t skip = seen < received ? std::min<uint64_t>(received - seen, data.size()) : 0;
              seen += data.size();
              if (skip < data.size() && !Push(data.subspan(skip))) return false;
              received = std::max(received, seen);
              return true;
            },
            &stop_);
        if (r.stopped) return;  // closing
        if (r.status == 200 && received == size_) return Finish(nullptr);
        if (r.status != 200 && !IsTransientStatus(r.status)) {
          r.body = std::move(error_body);
          return Finish(std::make_exception_ptr(TransferError(
              codes::kTransferFailed,
              "reading " + Shown(endpoint_.url()) + " failed: " + S3Client::Reason(r))));
        }
        if (attempt >= kAttempts) {
          return Finish(std::make_exception_ptr(
              TransferError(codes::kTransferFailed, "reading " + Shown(endpoint_.url()) + " gave " +
                                                        std::to_string(received) + " of " +
                                                        std::to_string(size_) + " bytes")));
        }
      } catch (const Cancelled&) {
        return Finish(std::make_exception_ptr(Cancelled{}));  // closing, or the import stopped
      } catch (const TransientError& e) {
        if (attempt >= kAttempts) {
          return Finish(std::make_exception_ptr(TransferError(
              codes::kTransferFailed, std::string("import source unreachable: ") + e.what())));
        }
      } catch (...) {
        return Finish(std::current_exception());
      }
      try {
        endpoint_.http().SleepBackoff(attempt, &stop_);
      } catch (const Cancelled&) {
        return Finish(std::make_exception_ptr(Cancelled{}));
      }
    }
  }

  // Blocks while the queue is full; false once the reader is gone.
  bool Push(std::span<const std::byte> data) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return closing_ || queued_ < kStreamBuffer; });
    if (closing_) return false;
    pieces_.emplace_back(data.begin(), data.end());
    queued_ += data.size();
    cv_.notify_all();
    return true;
  }

  void Finish(std::exception_ptr error) {
    std::lock_guard lock(mu_);
    error_ = error;
    done_ = true;
    cv_.notify_all();
  }

  UrlEndpoint& endpoint_;
  const uint64_t size_;
  CancelToken stop_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::vector<std::byte>> pieces_;  // under mu_, as below
  size_t front_used_ = 0;
  size_t queued_ = 0;
  uint64_t position_ = 0;  // stream offset of the first queued byte
  bool closing_ = false;
  bool done_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: started once the rest exists
};

class UrlSource : public ByteSource {
 public:
  UrlSource(std::string url, const CancelToken* cancel)
      : endpoint_(std::move(url)), cancel_(cancel), stop_(cancel) {
    HttpResponse head;
    try {
      head = endpoint_.Send("HEAD", std::nullopt, nullptr, cancel, kAttempts);
    } catch (const TransientError& e) {
      Unreadable(endpoint_.url(), std::string("unreachable: ") + e.what());
    }
    if (head.status == 404) Unreadable(endpoint_.url(), "no such object (404)");
    if (head.status < 200 || head.status >= 300) {
      Unreadable(endpoint_.url(), "the server answered " + S3Client::Reason(head));
    }
    size_ = ParseLength(head);
    if (size_ == UINT64_MAX) {
      Unreadable(endpoint_.url(),
                 "the server does not say its size (no Content-Length, or not a number)");
    }
    ranged_ = head.Header("accept-ranges") == "bytes";
  }

  ~UrlSource() override { StopPrefetch(); }

  uint64_t size() const override { return size_; }
  bool IsHole(uint64_t, uint64_t) override { return false; }
  std::string describe() const override { return Shown(endpoint_.url()); }

  void ReadAt(uint64_t offset, std::byte* out, size_t len) override {
    if (len == 0) return;
    if (ranged_ && ReadRanged(offset, out, len)) return;
    if (!stream_ || stream_->position() > offset) {
      stream_.reset();
      stream_ = std::make_unique<StreamReader>(endpoint_, size_, cancel_);
    }
    stream_->Read(offset, out, len);
  }

  void ReadHead(std::byte* out, size_t len) override {
    if (len == 0) return;
    if (ranged_) {
      Range head = Fetch(0, len);
      if (head.error) std::rethrow_exception(head.error);
      if (!head.not_ranged) {
        std::memcpy(out, head.data.data(), len);
        return;
      }
    }
    // The stream is dropped after the header: only its read-ahead buffer was fetched.
    StreamReader(endpoint_, size_, cancel_).Read(0, out, len);
  }

 private:
  struct Range {
    size_t len = 0;
    bool done = false;
    bool not_ranged = false;  // the server answered 200: it ignores Range
    std::vector<std::byte> data;
    std::exception_ptr error;
  };

  // Serves [offset, offset+len) from the prefetched ranges, asking for the next ones.
  // False if the server turned out to ignore ranges (the caller streams instead).
  bool ReadRanged(uint64_t offset, std::byte* out, size_t len) {
    std::unique_lock lock(mu_);
    if (workers_.empty()) {
      for (size_t i = 0; i < kParallelRanges; ++i) workers_.emplace_back([this] { FetchLoop(); });
    }
    // Keep kParallelRanges reads of this size queued or in flight from `offset` on.
    uint64_t at = offset;
    for (size_t i = 0; i < kParallelRanges && at < size_; ++i, at += len) {
      if (ranges_.contains(at)) continue;
      ranges_[at].len = static_cast<size_t>(std::min<uint64_t>(len, size_ - at));
      queue_.push_back(at);
    }
    work_cv_.notify_all();
    ready_cv_.wait(lock, [&] { return ranges_[offset].done; });
    Range range = std::move(ranges_[offset]);
    ranges_.erase(offset);
    if (range.error) std::rethrow_exception(range.error);
    if (range.not_ranged) {
      lock.unlock();
      StopPrefetch();
      ranged_ = false;
      return false;
    }
    if (range.data.size() != len) {
      throw TransferError(codes::kTransferFailed, "reading " + std::to_string(len) + " bytes at " +
                                                      std::to_string(offset) + " of " +
                                                      Shown(endpoint_.url()) + " gave " +
                                                      std::to_string(range.data.size()));
    }
    std::memcpy(out, range.data.data(), len);
    return true;
  }

  void FetchLoop() {
    std::unique_lock lock(mu_);
    for (;;) {
      work_cv_.wait(lock, [&] { return closing_ || !queue_.empty(); });
      if (closing_) return;
      uint64_t offset = queue_.front();
      queue_.pop_front();
      size_t len = ranges_[offset].len;
      lock.unlock();
      Range result = Fetch(offset, len);
      lock.lock();
      if (auto it = ranges_.find(offset); it != ranges_.end()) {
        result.done = true;
        it->second = std::move(result);
        ready_cv_.notify_all();
      }
    }
  }

  // One range, retried on transient failures and short bodies.
  Range Fetch(uint64_t offset, size_t len) {
    Range out;
    for (int attempt = 1;; ++attempt) {
      out.data.clear();
      out.data.reserve(len);
      std::string error_body;
      std::string problem;
      try {
        HttpResponse r = endpoint_.Send(
            "GET", std::pair(offset, len),
            [&](long status, std::span<const std::byte> data) {
              if (status == 200 && !(offset == 0 && len == size_)) return false;  // no Range
              if (status != 206 && status != 200) {
                AppendErrorBody(error_body, data);
                return true;
              }
              if (out.data.size() + data.size() > len) return false;
              out.data.insert(out.data.end(), data.begin(), data.end());
              return true;
            },
            &stop_);
        if (r.status == 200 && r.stopped) {
          out.not_ranged = true;
          return out;
        }
        if ((r.status == 206 || r.status == 200) && out.data.size() == len) return out;
        if (r.status / 100 == 2) {
          problem = "short read of " + std::to_string(out.data.size()) + " bytes";
        } else if (!IsTransientStatus(r.status)) {
          r.body = std::move(error_body);
          out.error = std::make_exception_ptr(TransferError(
              codes::kTransferFailed, "reading " + std::to_string(len) + " bytes at " +
                                          std::to_string(offset) + " of " + Shown(endpoint_.url()) +
                                          " failed: " + S3Client::Reason(r)));
          return out;
        } else {
          problem = "HTTP " + std::to_string(r.status);
        }
      } catch (const Cancelled&) {
        out.error = std::make_exception_ptr(Cancelled{});
        return out;
      } catch (const TransientError& e) {
        problem = e.what();
      } catch (...) {
        out.error = std::current_exception();
        return out;
      }
      if (attempt >= kAttempts) {
        out.error = std::make_exception_ptr(TransferError(
            codes::kTransferFailed, "import source unreachable: reading " + Shown(endpoint_.url()) +
                                        " at " + std::to_string(offset) + ": " + problem));
        return out;
      }
      try {
        endpoint_.http().SleepBackoff(attempt, &stop_);
      } catch (const Cancelled&) {
        out.error = std::make_exception_ptr(Cancelled{});
        return out;
      }
    }
  }

  void StopPrefetch() {
    {
      std::lock_guard lock(mu_);
      closing_ = true;
    }
    stop_.Cancel();  // aborts the ranged GETs in flight
    work_cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  UrlEndpoint endpoint_;
  const CancelToken* cancel_;  // the caller's, if any
  uint64_t size_ = 0;
  bool ranged_ = false;
  std::unique_ptr<StreamReader> stream_;

  CancelToken stop_;  // ours (closing), or the caller's
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable ready_cv_;
  std::map<uint64_t, Range> ranges_;  // by offset, under mu_, as below
  std::deque<uint64_t> queue_;
  bool closing_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace

bool IsUrlSource(const std::string& source) {
  return source.starts_with("http://") || source.starts_with("https://") ||
         source.starts_with("s3://");
}

std::unique_ptr<ByteSource> OpenUrlSource(const std::string& url, const CancelToken* cancel) {
  try {
    return std::make_unique<UrlSource>(url, cancel);
  } catch (const TransferError& e) {
    throw ValidationError(codes::kInvalidParameter, e.message());
  } catch (const std::runtime_error& e) {
    if (dynamic_cast<const Error*>(&e)) throw;
    Unreadable(url, e.what());
  }
}

std::unique_ptr<ByteSource> OpenImportSource(const std::string& source, const CancelToken* cancel) {
  return IsUrlSource(source) ? OpenUrlSource(source, cancel) : OpenFileSource(source);
}

}  // namespace imagerelay
