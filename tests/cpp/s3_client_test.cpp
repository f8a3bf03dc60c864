// S3Client's requests: where a key goes, how it is signed, what an error says (no network but
// a refused connection on 127.0.0.1).
#include "net/s3_client.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "imagerelay/error.hpp"

namespace imagerelay {
namespace {

constexpr std::time_t kExampleTime = 1369353600;  // 2013-05-24T00:00:00Z, AWS's example date
const sigv4::Credentials kExample{"AKIAIOSFODNN7EXAMPLE",
                                  "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};

std::string HeaderOf(const HttpRequest& request, const std::string& name) {
  for (const auto& [key, value] : request.headers) {
    if (key == name) return value;
  }
  return "";
}

TEST(S3ClientTest, PathStyleKeysGoBelowTheBucket) {
  S3Client client(ParseS3Uri("s3://bkt/p?endpoint=http://127.0.0.1:9000"), kExample);
  S3Client::Call call;
  call.key = "p/a b+c.txt";
  call.query = {{"list-type", "2"}, {"prefix", "p/"}};
  HttpRequest request = client.Signed(call, kExampleTime);
  EXPECT_EQ(request.url, "http://127.0.0.1:9000/bkt/p/a%20b%2Bc.txt?list-type=2&prefix=p%2F");
  EXPECT_EQ(HeaderOf(request, "Host"), "127.0.0.1:9000");

  call.key = "";  // the bucket itself
  call.query.clear();
  EXPECT_EQ(client.Signed(call, kExampleTime).url, "http://127.0.0.1:9000/bkt");
}

TEST(S3ClientTest, VirtualHostKeysGoBelowTheBucketsHost) {
  S3Client client(ParseS3Uri("s3://bkt?endpoint=https://s3.example:9000&addressing=virtual"),
                  kExample);
  S3Client::Call call;
  call.key = "chunks/ab/ab12";
  HttpRequest request = client.Signed(call, kExampleTime);
  EXPECT_EQ(request.url, "https://bkt.s3.example:9000/chunks/ab/ab12");
  EXPECT_EQ(HeaderOf(request, "Host"), "bkt.s3.example:9000");
}

// AWS's published GET Object example, sent through the client: the same Authorization.
TEST(S3ClientTest, SignsWithTheGivenCredentials) {
  S3Client client(
      ParseS3Uri("s3://examplebucket?endpoint=https://s3.amazonaws.com&addressing=virtual"
                 "&region=us-east-1"),
      kExample);
  S3Client::Call call;
  call.key = "test.txt";
  call.headers = {{"Range", "bytes=0-9"}};
  HttpRequest request = client.Signed(call, kExampleTime);
  EXPECT_EQ(request.url, "https://examplebucket.s3.amazonaws.com/test.txt");
  EXPECT_EQ(HeaderOf(request, "x-amz-date"), "20130524T000000Z");
  EXPECT_EQ(HeaderOf(request, "x-amz-content-sha256"), sigv4::kEmptyPayloadHash);
  EXPECT_EQ(HeaderOf(request, "Authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  for (const auto& [name, value] : request.headers) {
    EXPECT_EQ(value.find(kExample.secret_access_key), std::string::npos) << name;
  }
}

TEST(S3ClientTest, SignsTheBodyOrTheGivenPayloadHash) {
  S3Client client(ParseS3Uri("s3://bkt?endpoint=http://127.0.0.1:9000"),
                  {"AKID", "SECRET", "TOKEN"});
  const std::string body = "Welcome to Amazon S3.";
  S3Client::Call put;
  put.method = "PUT";
  put.key = "k";
  put.body = std::as_bytes(std::span(body));
  HttpRequest request = client.Signed(put, kExampleTime);
  EXPECT_EQ(HeaderOf(request, "x-amz-content-sha256"), sigv4::HexSha256(body));
  EXPECT_EQ(HeaderOf(request, "x-amz-security-token"), "TOKEN");
  EXPECT_NE(HeaderOf(request, "Authorization").find("x-amz-security-token"), std::string::npos);

  put.payload_hash = sigv4::kUnsignedPayload;
  EXPECT_EQ(HeaderOf(client.Signed(put, kExampleTime), "x-amz-content-sha256"),
            sigv4::kUnsignedPayload);
}

TEST(S3ClientTest, SameServiceNeedsTheSameEndpointRegionAndCredentials) {
  auto client = [](const std::string& uri, const sigv4::Credentials& credentials = kExample) {
    return std::make_unique<S3Client>(ParseS3Uri(uri), credentials);
  };
  auto a = client("s3://bkt-a?endpoint=http://127.0.0.1:9000");
  EXPECT_TRUE(a->SameServiceAs(*client("s3://bkt-b/p?endpoint=http://127.0.0.1:9000")));
  EXPECT_FALSE(a->SameServiceAs(*client("s3://bkt-a?endpoint=http://127.0.0.1:9001")));
  EXPECT_FALSE(
      a->SameServiceAs(*client("s3://bkt-a?endpoint=http://127.0.0.1:9000&region=eu-west-3")));
  EXPECT_FALSE(a->SameServiceAs(
      *client("s3://bkt-a?endpoint=http://127.0.0.1:9000", {kExample.access_key_id, "other", ""})));
}

TEST(S3ClientTest, ReasonComesFromTheAnswer) {
  HttpResponse denied;
  denied.status = 403;
  denied.body =
      "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Access &amp; "
      "Denied</Message></Error>";
  EXPECT_EQ(S3Client::Reason(denied), "403 AccessDenied: Access & Denied");
  HttpResponse bare;
  bare.status = 404;
  EXPECT_EQ(S3Client::Reason(bare), "404 Not Found");
  EXPECT_TRUE(S3Client::IsTransientCode("SlowDown"));
  EXPECT_FALSE(S3Client::IsTransientCode("AccessDenied"));
}

TEST(S3ClientTest, AFailedRequestDoesNotShowTheSecret) {
  // Port 1 on the loopback: the connection is refused at once.
  S3Client client(ParseS3Uri("s3://bkt?endpoint=http://127.0.0.1:1"), kExample);
  S3Client::Call call;
  call.key = "k";
  call.retry = false;
  try {
    client.Perform(call);
    ADD_FAILURE() << "a request to a closed port succeeded";
  } catch (const TransientError& e) {
    EXPECT_EQ(std::string(e.what()).find(kExample.secret_access_key), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace imagerelay
