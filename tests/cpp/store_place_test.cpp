// Where a store keeps its bytes (store/store_place.hpp): two regions may not share a place
// or nest one in the other, so places compare by whole components, links resolved.
#include "store/store_place.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "scratch_dir.hpp"

namespace imagerelay {
namespace {

namespace fs = std::filesystem;

bool Overlap(const std::string& a, const std::string& b) {
  return PlaceOfStore(a).value().Overlaps(PlaceOfStore(b).value());
}

TEST(StorePlaceTest, LocalPlacesCompareByWholeComponents) {
  EXPECT_TRUE(Overlap("/data/bj", "/data/bj"));
  EXPECT_TRUE(Overlap("/data/bj", "/data/bj/"));
  EXPECT_TRUE(Overlap("/data/bj", "file:///data/bj"));
  EXPECT_TRUE(Overlap("/data/bj", "file:///data/%62j"));  // percent-decoded
  EXPECT_TRUE(Overlap("/data/bj", "/data/x/../bj"));
  EXPECT_TRUE(Overlap("/data/bj", "/data/bj/inner"));
  EXPECT_TRUE(Overlap("/data", "/data/bj"));
  EXPECT_TRUE(Overlap("/", "/data/bj"));
  EXPECT_FALSE(Overlap("/data/bj", "/data/bj2"));
  EXPECT_FALSE(Overlap("/data/bj2", "/data/bj"));
  EXPECT_FALSE(Overlap("/data/bj", "/data/gz"));
  const StorePlace outer = PlaceOfStore("/data").value();
  const StorePlace inner = PlaceOfStore("/data/bj").value();
  EXPECT_TRUE(outer.Contains(inner));
  EXPECT_FALSE(inner.Contains(outer));
}

TEST(StorePlaceTest, LinksAreFollowedWhereThePathExists) {
  testing_util::ScratchDir dir;
  fs::create_directories(dir.path() / "real" / "bj");
  fs::create_directory_symlink(dir.path() / "real", dir.path() / "link");
  EXPECT_TRUE(
      Overlap((dir.path() / "real" / "bj").string(), (dir.path() / "link" / "bj").string()));
  // Past the link, a part that does not exist yet still lands inside.
  EXPECT_TRUE(
      Overlap((dir.path() / "real").string(), (dir.path() / "link" / "new" / "x").string()));
  EXPECT_EQ(PlaceOfDirectory(dir.path() / "link" / "bj").where,
            PlaceOfStore((dir.path() / "real" / "bj").string())->where);
}

TEST(StorePlaceTest, S3PlacesAreEndpointBucketAndPrefix) {
  const std::string at = "?endpoint=http://127.0.0.1:9000";
  EXPECT_TRUE(Overlap("s3://bucket/relay" + at, "s3://bucket/relay" + at + "&region=eu-west-1"));
  EXPECT_TRUE(Overlap("s3://bucket/relay" + at, "s3://bucket/relay/inner" + at));
  EXPECT_TRUE(Overlap("s3://bucket" + at, "s3://bucket/relay" + at));
  EXPECT_TRUE(Overlap("s3://bucket/relay?endpoint=http://LOCALHOST:9000",
                      "s3://bucket/relay?endpoint=http://localhost:9000"));
  EXPECT_FALSE(Overlap("s3://bucket/relay" + at, "s3://bucket/relay2" + at));
  EXPECT_FALSE(Overlap("s3://bucket/relay" + at, "s3://other-bucket/relay" + at));
  EXPECT_FALSE(
      Overlap("s3://bucket/relay" + at, "s3://bucket/relay?endpoint=http://127.0.0.1:9001"));
  // Never the same place as a directory, whatever the path.
  EXPECT_FALSE(Overlap("s3://bucket/relay" + at, "/"));
}

TEST(StorePlaceTest, AMalformedUriHasNoPlace) {
  EXPECT_FALSE(PlaceOfStore("").has_value());
  EXPECT_FALSE(PlaceOfStore("ftp://host/x").has_value());
  EXPECT_FALSE(PlaceOfStore("s3://B/x").has_value());
}

}  // namespace
}  // namespace imagerelay
