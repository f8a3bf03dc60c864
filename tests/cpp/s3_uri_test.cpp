// Parsing of s3:// region URIs (no network).
#include <gtest/gtest.h>

#include "imagerelay/error.hpp"
#include "net/s3_client.hpp"
#include "store/pack_store.hpp"
#include "store/s3_store.hpp"

namespace imagerelay {
namespace {

TEST(S3UriTest, DefaultsToAwsPathStyle) {
  S3Location loc = ParseS3Uri("s3://images-gz");
  EXPECT_EQ(loc.bucket, "images-gz");
  EXPECT_EQ(loc.prefix, "");
  EXPECT_EQ(loc.scheme, "https");
  EXPECT_EQ(loc.host, "s3." + loc.region + ".amazonaws.com");
  EXPECT_FALSE(loc.virtual_host);
  EXPECT_TRUE(loc.verify_tls);
  EXPECT_EQ(loc.display, "s3://images-gz");
}

TEST(S3UriTest, ReadsEndpointRegionAddressingAndPrefix) {
  S3Location loc = ParseS3Uri(
      "s3://images-gz/relay/prod/?endpoint=https://S3.example:9000/&region=eu-west-3"
      "&addressing=virtual&verify_tls=false&low_speed_time=5");
  EXPECT_EQ(loc.prefix, "relay/prod");
  EXPECT_EQ(loc.scheme, "https");
  EXPECT_EQ(loc.host, "s3.example:9000");
  EXPECT_EQ(loc.region, "eu-west-3");
  EXPECT_TRUE(loc.virtual_host);
  EXPECT_FALSE(loc.verify_tls);
  EXPECT_EQ(loc.low_speed_time_s, 5);
  EXPECT_EQ(loc.display, "s3://images-gz/relay/prod");
}

TEST(S3UriTest, DropsDefaultPortsAndDecodesEscapes) {
  EXPECT_EQ(ParseS3Uri("s3://bkt?endpoint=https://h.example:443").host, "h.example");
  EXPECT_EQ(ParseS3Uri("s3://bkt?endpoint=http://h.example:80").host, "h.example");
  EXPECT_EQ(ParseS3Uri("s3://bkt?endpoint=http%3A%2F%2F127.0.0.1%3A9000").host, "127.0.0.1:9000");
  EXPECT_EQ(ParseS3Uri("s3://bkt/a%20b").prefix, "a b");
}

TEST(S3UriTest, RejectsBadSettingsWithoutEchoingThem) {
  for (const std::string uri :
       {"s3://bkt?endpoint=ftp://h", "s3://bkt?endpoint=h.example", "s3://bkt?addressing=sideways",
        "s3://bkt?endpoint=https://h/path", "s3://bkt?secret_access_key=hunter2",
        "s3://bkt?region=us east", "s3://bkt?low_speed_time=0",
        // Found by fuzzing: a decoded CR LF (or any control character) in the endpoint would
        // reach the Host header.
        "s3://bkt?endpoint=http://h%0d%0aX-Evil:y", "s3://bkt?endpoint=http://h%09x"}) {
    try {
      ParseS3Uri(uri);
      ADD_FAILURE() << uri;
    } catch (const ValidationError& e) {
      EXPECT_EQ(e.code(), codes::kInvalidParameter);
      EXPECT_EQ(e.message().find("hunter2"), std::string::npos) << e.message();
    }
  }
}

TEST(S3UriTest, OpenStoreDispatchesS3) {
  auto store = OpenStore("s3://bkt/p?endpoint=http://127.0.0.1:1");
  EXPECT_EQ(store->uri(), "s3://bkt/p");
  auto* packed = dynamic_cast<PackStore*>(store.get());
  ASSERT_NE(packed, nullptr);
  EXPECT_NE(dynamic_cast<S3Store*>(&packed->base()), nullptr);
  EXPECT_TRUE(store->WaitsOnServer());  // a copy to or from it keeps many requests in flight
}

}  // namespace
}  // namespace imagerelay
