#include "imagerelay/store.hpp"

#include <gtest/gtest.h>

#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
#include "scratch_dir.hpp"

namespace imagerelay {
namespace {

using testing_util::ScratchDir;

void ExpectInvalidUri(const std::string& uri, const std::string& mention = "") {
  EXPECT_NE(CheckStoreUri(uri), "") << uri;
  try {
    OpenStore(uri);
    ADD_FAILURE() << "opened " << uri;
  } catch (const ValidationError& e) {
    EXPECT_EQ(e.code(), codes::kInvalidParameter);
    if (!mention.empty()) EXPECT_NE(e.message().find(mention), std::string::npos) << e.message();
  }
}

TEST(StoreTest, OpensPathsAndFileUris) {
  ScratchDir dir;
  for (const std::string& uri :
       {dir.path().string() + "/a", "file://" + dir.path().string() + "/b"}) {
    EXPECT_EQ(CheckStoreUri(uri), "") << uri;
    auto store = OpenStore(uri);
    EXPECT_EQ(store->uri(), uri);
    EXPECT_FALSE(store->WaitsOnServer());  // a copy between local disks: a worker per CPU
    store->Check();
    store->PutChunk(Sha256Hex("x", 1), std::as_bytes(std::span("x", 1)));
  }
  // A region keeps blocks in packs; the first release's chunks/ is never made any more.
  for (const char* root : {"a", "b"}) {
    EXPECT_TRUE(std::filesystem::is_directory(dir.path() / root / "packs")) << root;
    EXPECT_FALSE(std::filesystem::exists(dir.path() / root / "chunks")) << root;
  }

  // Percent escapes in file URIs are decoded.
  auto spaced = OpenStore("file://" + dir.path().string() + "/with%20space");
  spaced->Check();
  EXPECT_TRUE(std::filesystem::is_directory(dir.path() / "with space" / "packs"));

  EXPECT_EQ(CheckStoreUri("relative/dir"), "");
  EXPECT_NE(OpenStore("relative/dir"), nullptr);  // opening touches nothing
  EXPECT_FALSE(std::filesystem::exists("relative/dir"));
}

// A first-release store's chunks/ is read, never written: a link in its place (to files
// outside the region) makes the region unavailable rather than read through.
TEST(StoreTest, ALinkedChunksDirectoryOfAnOldStoreIsRefused) {
  ScratchDir dir;
  const std::filesystem::path root = dir.path() / "old", outside = dir.path() / "outside";
  OpenStore(root.string())->Check();
  std::filesystem::create_directories(outside);
  std::filesystem::create_directory_symlink(outside, root / "chunks");
  try {
    OpenStore(root.string())->Check();
    ADD_FAILURE() << "a linked chunks/ was accepted";
  } catch (const TransferError& e) {
    EXPECT_EQ(e.code(), codes::kStoreUnavailable);
    EXPECT_NE(e.message().find((root / "chunks").string()), std::string::npos) << e.message();
  }
  EXPECT_TRUE(std::filesystem::is_empty(outside));
}

TEST(StoreTest, RejectsMalformedUris) {
  ExpectInvalidUri("");
  ExpectInvalidUri(std::string("/data/b\0j", 9));
  ExpectInvalidUri("http://example.com/x", "http://example.com/x");
  ExpectInvalidUri("ftp://host/dir", "ftp");
  ExpectInvalidUri("file://relative/dir");
  ExpectInvalidUri("file://");
  ExpectInvalidUri("file:///data/%zz");
  ExpectInvalidUri("file:///data/%00x");
  ExpectInvalidUri("s3://", "s3://");
  ExpectInvalidUri("s3://UPPER/prefix");
  ExpectInvalidUri("s3://ab");
  ExpectInvalidUri("s3://bucket/with space");
  ExpectInvalidUri("s3://bucket?=x");
  // Settings in the query may be secret: messages leave them out.
  std::string problem = CheckStoreUri("s3://Bad_Bucket?secret_key=hunter2");
  EXPECT_NE(problem, "");
  EXPECT_EQ(problem.find("hunter2"), std::string::npos) << problem;
}

// Syntax only: opening an S3 store is the S3 store's own test.
TEST(StoreTest, S3UrisAreValid) {
  for (const std::string uri : {"s3://bucket", "s3://my-bucket.example/images/prod",
                                "s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=x",
                                "s3://bucket?endpoint=http://minio:9000"}) {
    EXPECT_EQ(CheckStoreUri(uri), "") << uri;
  }
}

}  // namespace
}  // namespace imagerelay
