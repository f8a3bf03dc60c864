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

// Found by fuzzing (tests/fuzz/regressions/fuzz_store_uri/a-value-inside-a-setting-name): an
// unknown setting's name was shown whole, and a name is part of the query, where a secret may
// be (pasted without its `name=`). A known name, or a short plain one (a typo), is shown.
TEST(S3UriTest, ASettingIsNamedInAnErrorOnlyWhenItReadsAsAName) {
  auto message_of = [](const std::string& uri) {
    try {
      ParseS3Uri(uri);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), codes::kInvalidParameter) << uri;
      return e.message();
    }
    ADD_FAILURE() << uri << " was taken";
    return std::string();
  };
  EXPECT_NE(message_of("s3://bkt?regoin=us-east-1").find("unknown setting \"regoin\""),
            std::string::npos);
  const std::string pasted = message_of(
      "s3://bkt?endpoint=http://127.0.0.1:9000&wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
  EXPECT_EQ(pasted.find("wJalrXUtnFEMI"), std::string::npos) << pasted;
  EXPECT_NE(pasted.find("not shown"), std::string::npos) << pasted;
  const std::string long_name = message_of("s3://bkt?secretvalue1234567=1");
  EXPECT_EQ(long_name.find("secretvalue1234567"), std::string::npos) << long_name;
  const std::string twice =
      message_of("s3://bkt?region=us-east-1&low_speed_time=5&low_speed_time=6");
  EXPECT_NE(twice.find("\"low_speed_time\" is given twice"), std::string::npos) << twice;
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
