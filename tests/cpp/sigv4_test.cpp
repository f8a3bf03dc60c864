// AWS Signature V4 against the examples AWS publishes in "Signature Calculations for the
// Authorization Header" (docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html).
#include "net/sigv4.hpp"

#include <gtest/gtest.h>

namespace imagerelay::sigv4 {
namespace {

const Credentials kExample{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
constexpr const char* kDate = "20130524T000000Z";
constexpr const char* kHost = "examplebucket.s3.amazonaws.com";

TEST(Sigv4Test, GetObjectExample) {
  Request r;
  r.method = "GET";
  r.path = "/test.txt";
  r.payload_hash = kEmptyPayloadHash;
  r.headers = {{"Host", kHost},
               {"Range", "bytes=0-9"},
               {"x-amz-content-sha256", kEmptyPayloadHash},
               {"x-amz-date", kDate}};
  EXPECT_EQ(
      CanonicalRequest(r),
      "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n"
      "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
      "x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n"
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(StringToSign(kDate, Scope("20130524", "us-east-1", "s3"), CanonicalRequest(r)),
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n"
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");
  EXPECT_EQ(Authorization(r, kExample, "us-east-1", kDate),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
}

TEST(Sigv4Test, PutObjectExample) {
  const std::string body = "Welcome to Amazon S3.";
  Request r;
  r.method = "PUT";
  r.path = "/test$file.text";
  r.payload_hash = HexSha256(body);
  EXPECT_EQ(r.payload_hash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
  r.headers = {{"Host", kHost},
               {"Date", "Fri, 24 May 2013 00:00:00 GMT"},
               {"x-amz-date", kDate},
               {"x-amz-storage-class", "REDUCED_REDUNDANCY"},
               {"x-amz-content-sha256", r.payload_hash}};
  EXPECT_EQ(CanonicalRequest(r).substr(0, 26), "PUT\n/test%24file.text\n\ndat");
  EXPECT_EQ(HexSha256(CanonicalRequest(r)),
            "9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d");
  EXPECT_EQ(Authorization(r, kExample, "us-east-1", kDate),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
            "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"
            "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
}

TEST(Sigv4Test, GetBucketLifecycleExample) {
  Request r;
  r.method = "GET";
  r.path = "/";
  r.query = {{"lifecycle", ""}};
  r.payload_hash = kEmptyPayloadHash;
  r.headers = {{"Host", kHost}, {"x-amz-date", kDate}, {"x-amz-content-sha256", kEmptyPayloadHash}};
  EXPECT_EQ(CanonicalRequest(r).substr(0, 17), "GET\n/\nlifecycle=\n");
  EXPECT_EQ(Authorization(r, kExample, "us-east-1", kDate),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
            "SignedHeaders=host;x-amz-content-sha256;x-amz-date,"
            "Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
}

TEST(Sigv4Test, ListObjectsExample) {
  Request r;
  r.method = "GET";
  r.path = "/";
  r.query = {{"prefix", "J"}, {"max-keys", "2"}};  // signed sorted, whatever the order here
  r.payload_hash = kEmptyPayloadHash;
  r.headers = {{"Host", kHost}, {"x-amz-date", kDate}, {"x-amz-content-sha256", kEmptyPayloadHash}};
  EXPECT_EQ(CanonicalRequest(r).substr(0, 25), "GET\n/\nmax-keys=2&prefix=J");
  EXPECT_EQ(Authorization(r, kExample, "us-east-1", kDate),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
            "SignedHeaders=host;x-amz-content-sha256;x-amz-date,"
            "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
}

TEST(Sigv4Test, UriEncodeFollowsS3Rules) {
  EXPECT_EQ(UriEncode("a b/c~d_e-f.g", false), "a%20b/c~d_e-f.g");
  EXPECT_EQ(UriEncode("a/b+c=d", true), "a%2Fb%2Bc%3Dd");
  EXPECT_EQ(UriEncode("\xc3\xa9", true), "%C3%A9");
  EXPECT_EQ(AmzDate(1369353600), "20130524T000000Z");
}

TEST(Sigv4Test, SigningKeyMatchesDocumentedDerivation) {
  // The key for the examples above, derived step by step; the secret never appears in output.
  auto key = SigningKey(kExample.secret_access_key, "20130524", "us-east-1", "s3");
  EXPECT_EQ(Signature(key, "x").size(), 64u);
  Request r;
  r.method = "GET";
  r.path = "/";
  r.payload_hash = kEmptyPayloadHash;
  r.headers = {{"Host", kHost}, {"x-amz-date", kDate}};
  EXPECT_EQ(Authorization(r, kExample, "us-east-1", kDate).find(kExample.secret_access_key),
            std::string::npos);
}

}  // namespace
}  // namespace imagerelay::sigv4
