// Imports from a URL (dataplane/url_source.cpp) against a stand-in server
// (SetHttpTransportForTesting): what the server's answers mean to the import.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "imagerelay/error.hpp"
#include "imagerelay/image_io.hpp"
#include "net/http_client.hpp"

namespace imagerelay {
namespace {

// A server holding `object`, whose HEAD says `content_length` and takes ranges.
class StandInServer {
 public:
  StandInServer(std::string object, std::string content_length)
      : object_(std::move(object)), content_length_(std::move(content_length)) {
    SetHttpTransportForTesting([this](const HttpRequest& request, const HttpAnswerHeader& header,
                                      const HttpAnswerBody& body) {
      std::string range;
      for (const auto& [name, value] : request.headers) {
        if (name == "Range") range = value;
      }
      header(range.empty() ? "HTTP/1.1 200 OK\r\n" : "HTTP/1.1 206 Partial Content\r\n");
      if (request.method == "HEAD") {
        header("Content-Length: " + content_length_ + "\r\n");
        header("Accept-Ranges: bytes\r\n");
        return;
      }
      const size_t first = range.empty() ? 0 : std::stoul(range.substr(6));
      const size_t last =
          range.empty() ? object_.size() - 1 : std::stoul(range.substr(range.find('-') + 1));
      const std::string part = object_.substr(first, last - first + 1);
      body(std::as_bytes(std::span(part)));
    });
  }
  ~StandInServer() { SetHttpTransportForTesting({}); }

 private:
  std::string object_;
  std::string content_length_;
};

TEST(UrlSourceTest, ReadsTheObjectOfItsContentLength) {
  StandInServer server("abcdefgh", "8");
  auto source = OpenUrlSource("http://127.0.0.1:9/disk.img");
  ASSERT_EQ(source->size(), 8u);
  std::vector<std::byte> out(4);
  source->ReadAt(2, out.data(), out.size());
  EXPECT_EQ(std::memcmp(out.data(), "cdef", 4), 0);
}

// Found by fuzzing (tests/fuzz/regressions/fuzz_url_import): strtoull took "-2" as 2^64 - 2
// and "3<junk>" as 3; a size that is not a plain number is no size.
TEST(UrlSourceTest, AContentLengthThatIsNotANumberIsNoSize) {
  for (const std::string length : {"-2", "3abc", "+3", "0x10", "99999999999999999999999", ""}) {
    StandInServer server("abc", length);
    try {
      OpenUrlSource("http://127.0.0.1:9/disk.img");
      ADD_FAILURE() << "took Content-Length \"" << length << "\"";
    } catch (const ValidationError& e) {
      EXPECT_EQ(e.code(), codes::kInvalidParameter);
      EXPECT_NE(e.message().find("does not say its size"), std::string::npos) << e.message();
    }
  }
}

}  // namespace
}  // namespace imagerelay
