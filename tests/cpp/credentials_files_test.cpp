// CredentialsFiles::Parse: the credentials JSON older homes kept in the catalog, and the
// shape of a region's credentials file.
#include "engine/credentials_files.hpp"

#include <gtest/gtest.h>

namespace imagerelay {
namespace {

TEST(CredentialsFilesTest, ParsesTheThreeFields) {
  const sigv4::Credentials c = CredentialsFiles::Parse(
      R"({"access_key_id": "AKID", "secret_access_key": "s3cr3t", "session_token": "tok"})");
  EXPECT_EQ(c.access_key_id, "AKID");
  EXPECT_EQ(c.secret_access_key, "s3cr3t");
  EXPECT_EQ(c.session_token, "tok");
}

// Found by fuzzing (tests/fuzz/regressions/fuzz_store_files): a field that is not a string
// threw nlohmann's type_error; it now counts as missing, as does text that is not JSON.
TEST(CredentialsFilesTest, FieldsOfOtherTypesCountAsMissing) {
  const sigv4::Credentials c =
      CredentialsFiles::Parse(R"({"access_key_id": 5, "secret_access_key": ["s"]})");
  EXPECT_TRUE(c.empty());
  EXPECT_EQ(c.session_token, "");
  EXPECT_TRUE(CredentialsFiles::Parse("not json").empty());
  EXPECT_TRUE(CredentialsFiles::Parse("[1, 2]").empty());
}

}  // namespace
}  // namespace imagerelay
