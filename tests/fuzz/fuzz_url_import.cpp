// The HTTP answers an import from a URL reads (dataplane/url_source.cpp): the HEAD that gives
// the size (Content-Length) and whether ranges are taken (Accept-Ranges), then ranged GETs
// (206, or a 200 from a server that ignores ranges) or one streamed GET, with retries. The
// input describes the server: its first line "http" or "s3" (the URL's kind), its second the
// body's piece size and "flaky" (each range fails once with 503 first), then the HEAD answer
// and the GET answer (fuzz_support.hpp; separated by "\n=====\n"). A ranged GET answered 206
// gets that range of the GET answer's body. An import must read exactly the object's bytes,
// of the size its Content-Length says, or fail with imagerelay's Error.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "imagerelay/image_io.hpp"

namespace imagerelay::fuzz {
namespace {

constexpr uint64_t kReadBytes = 48 << 10;  // read at most this much of the object
constexpr size_t kReadPiece = 16 << 10;

class FakeServer {
 public:
  FakeServer(std::string_view text) {
    const std::string_view flags = TakeLine(text);
    flaky_ = flags.find("flaky") != std::string_view::npos;
    piece_ = std::clamp<size_t>(std::strtoul(std::string(flags).c_str(), nullptr, 10), 1, 65536);
    const std::vector<std::string_view> parts = Split(text, kAnswerSeparator);
    head_ = ParseAnswer(parts[0]);
    get_ = ParseAnswer(parts.size() > 1 ? parts[1] : parts[0]);
  }
  const std::string& body() const { return get_.body; }
  std::string ContentLength() const {
    for (const std::string& line : head_.headers) {
      std::string name = line.substr(0, line.find(':'));
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (name == "content-length" && line.find(':') != std::string::npos) {
        std::string value = line.substr(line.find(':') + 1);
        value.erase(0, value.find_first_not_of(" \t"));
        value.erase(value.find_last_not_of(" \t") + 1);
        return value;
      }
    }
    return "";
  }

  HttpTransport Transport() {
    return [this](const HttpRequest& request, const HttpAnswerHeader& header,
                  const HttpAnswerBody& body) {
      if (request.method == "HEAD") return Deliver(head_, request, header, body, piece_);
      std::string range;
      for (const auto& [name, value] : request.headers) {
        if (name == "Range") range = value;
      }
      if (flaky_ && !range.empty()) {
        std::lock_guard lock(mutex_);
        if (failed_once_.insert(range).second) {
          return Deliver(ParseAnswer("503 Slow Down\n\n"), request, header, body, piece_);
        }
      }
      if (range.empty() || !get_.status_line.starts_with("HTTP/1.1 206")) {
        return Deliver(get_, request, header, body, piece_);
      }
      // "bytes=first-last" of the GET answer's body, as much of it as there is.
      const uint64_t first = std::strtoull(range.c_str() + 6, nullptr, 10);
      const uint64_t last = std::strtoull(range.c_str() + range.find('-') + 1, nullptr, 10);
      Answer slice = get_;
      slice.body = first < get_.body.size() ? get_.body.substr(first, last - first + 1) : "";
      Deliver(slice, request, header, body, piece_);
    };
  }

 private:
  Answer head_;
  Answer get_;
  bool flaky_ = false;
  size_t piece_ = 4096;
  std::mutex mutex_;
  std::set<std::string> failed_once_;
};

// Digits only, of a value a uint64_t holds (leading zeros allowed: HTTP's 1*DIGIT).
bool PlainDecimal(const std::string& s) {
  return !s.empty() && s.size() <= 20 &&
         std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
         (s.size() < 20 || s <= "18446744073709551615");
}

void Import(const std::string& url, const FakeServer& server) {
  std::unique_ptr<ByteSource> source = OpenUrlSource(url);
  const std::string length = server.ContentLength();
  Require(PlainDecimal(length) && std::strtoull(length.c_str(), nullptr, 10) == source->size(),
          "an import source of size " + std::to_string(source->size()) + " from Content-Length \"" +
              length + "\"");
  const std::string& object = server.body();
  auto check = [&](uint64_t offset, const std::vector<std::byte>& got) {
    Require(offset <= object.size() && got.size() <= object.size() - offset &&
                std::equal(got.begin(), got.end(),
                           reinterpret_cast<const std::byte*>(object.data()) + offset),
            "an import read bytes the object does not hold at " + std::to_string(offset));
  };
  std::vector<std::byte> head(static_cast<size_t>(std::min<uint64_t>(source->size(), 4096)));
  source->ReadHead(head.data(), head.size());
  check(0, head);
  const uint64_t end = std::min<uint64_t>(source->size(), kReadBytes);
  for (uint64_t at = 0; at < end; at += kReadPiece) {
    std::vector<std::byte> piece(static_cast<size_t>(std::min<uint64_t>(kReadPiece, end - at)));
    source->ReadAt(at, piece.data(), piece.size());
    check(at, piece);
  }
  if (end == source->size()) source->CheckUnchanged();
}

}  // namespace
}  // namespace imagerelay::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imagerelay;
  using namespace imagerelay::fuzz;
  std::string_view text = AsText(data, size);
  const std::string_view kind = TakeLine(text);
  FakeServer server(text);
  ScopedTransport transport(server.Transport());
  const std::string url = kind == "s3"
                              ? "s3://fuzz-bucket/images/disk.img?endpoint=http://127.0.0.1:9"
                              : "http://127.0.0.1:9/images/disk.img";
  OnlyStableErrors([&] { Import(url, server); });
  return 0;
}
