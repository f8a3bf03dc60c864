#include "base/url_redaction.hpp"

#include <gtest/gtest.h>

namespace imagerelay {
namespace {

TEST(UrlRedactionTest, CredentialsGoAndTheRestStays) {
  EXPECT_EQ(RedactUrl("http://user:hunter2@files.example/d.raw"),
            "http://user:***@files.example/d.raw");
  EXPECT_EQ(RedactUrl("https://ghp_TOKEN@files.example:8443/d.raw"),
            "https://***@files.example:8443/d.raw");
  EXPECT_EQ(RedactUrl("https://b.s3.amazonaws.com/d.raw?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                      "&X-Amz-Credential=AKIA%2F20261202&X-Amz-Signature=abc123&x=1#frag"),
            "https://b.s3.amazonaws.com/d.raw?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=***&X-Amz-Signature=***&x=1#frag");
  EXPECT_EQ(RedactUrl("https://acct.blob.core.windows.net/c/d.vhd?sv=2024&sig=SECRET&se=1"),
            "https://acct.blob.core.windows.net/c/d.vhd?sv=2024&sig=***&se=1");
  EXPECT_EQ(RedactUrl("s3://bucket/d.raw?endpoint=http://127.0.0.1:9000&region=us-east-1"),
            "s3://bucket/d.raw?endpoint=http://127.0.0.1:9000&region=us-east-1");
  // A password holding '@' or '/' is cut at the host's '@'.
  EXPECT_EQ(RedactUrl("http://u:p@ss@host/x"), "http://u:***@host/x");
  EXPECT_EQ(RedactUrl("/data/images/golden.raw"), "/data/images/golden.raw");
  EXPECT_EQ(RedactUrl("http://host"), "http://host");
  EXPECT_EQ(RedactUrl("http://host/x?"), "http://host/x?");
  EXPECT_EQ(RedactUrl("http://host/x?token"), "http://host/x?token");
}

}  // namespace
}  // namespace imagerelay
