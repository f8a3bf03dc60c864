#include "imagerelay/manifest.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "first_release_json.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"

namespace imagerelay {
namespace {

using testing_util::FirstReleaseJson;

const std::string kA(64, 'a');
const std::string kB = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const std::string kDigest = "sha256:" + kB;

Manifest Sample() { return Manifest::InMemory(10, 4, {kA, "", kB}, kDigest); }

void ExpectInvalid(const std::string& text) {
  try {
    Manifest::FromJson(text);
    ADD_FAILURE() << "accepted: " << text;
  } catch (const ValidationError& e) {
    EXPECT_EQ(e.code(), codes::kInvalidParameter) << text;
  }
}

TEST(ManifestTest, RoundTrip) {
  Manifest m = Sample();
  EXPECT_EQ(Manifest::FromJson(FirstReleaseJson(m)), m);
  EXPECT_EQ(m.Hashes(0, 10), (std::vector<std::string>{kA, "", kB}));  // clipped at the end
  EXPECT_EQ(m.Hashes(3, 1), std::vector<std::string>{});
}

// The chunk-list digest is recorded in catalogs (a manifest changed behind them is refused):
// its text is fixed, whatever computes it.
TEST(ManifestTest, ChunkListDigestIsOfAFixedText) {
  const std::string text = "imagerelay chunk list v1\n10\n4\n" + kA + "\n\n" + kB + "\n";
  EXPECT_EQ(Sample().ChunkListDigest(), Sha256Hex(text.data(), text.size()));
}

TEST(ManifestTest, JsonFormat) {
  auto j = nlohmann::json::parse(FirstReleaseJson(Sample()));
  EXPECT_EQ(j["version"], 1);
  EXPECT_EQ(j["size"], 10);
  EXPECT_EQ(j["chunk_size"], 4);
  EXPECT_EQ(j["digest"], kDigest);
  ASSERT_EQ(j["chunks"].size(), 3u);
  EXPECT_EQ(j["chunks"][0], kA);
  EXPECT_TRUE(j["chunks"][1].is_null());
}

TEST(ManifestTest, EmptyImage) {
  Manifest m = Manifest::InMemory(
      0, 4 << 20, {}, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Manifest::FromJson(FirstReleaseJson(m)), m);
  EXPECT_EQ(m.count(), 0u);
}

TEST(ManifestTest, ChunkGeometry) {
  Manifest m = Sample();
  EXPECT_EQ(m.ChunkOffset(2), 8u);
  EXPECT_EQ(m.ChunkLength(0), 4u);
  EXPECT_EQ(m.ChunkLength(2), 2u);  // short last chunk
  EXPECT_EQ(m.ChunkLength(3), 0u);
}

TEST(ManifestTest, RejectsBadJson) {
  ExpectInvalid("");
  ExpectInvalid("not json");
  ExpectInvalid("[]");
  ExpectInvalid("{\"version\":1");
}

TEST(ManifestTest, RejectsInconsistentManifests) {
  auto with = [](const std::string& key, nlohmann::json value) {
    auto j = nlohmann::json::parse(FirstReleaseJson(Sample()));
    if (value.is_discarded()) {
      j.erase(key);
    } else {
      j[key] = value;
    }
    return j.dump();
  };
  const nlohmann::json kMissing = nlohmann::json(nlohmann::json::value_t::discarded);
  ExpectInvalid(with("version", 2));
  ExpectInvalid(with("version", kMissing));
  ExpectInvalid(with("size", -1));
  ExpectInvalid(with("size", "10"));
  ExpectInvalid(with("size", 13));  // needs 4 chunks
  ExpectInvalid(with("size", 8));   // needs 2 chunks
  ExpectInvalid(with("chunk_size", 0));
  ExpectInvalid(with("chunk_size", kMissing));
  ExpectInvalid(with("digest", kB));
  ExpectInvalid(with("digest", "sha256:" + std::string(64, 'A')));
  ExpectInvalid(with("digest", kMissing));
  ExpectInvalid(with("chunks", kMissing));
  ExpectInvalid(with("chunks", "abc"));
  ExpectInvalid(with("chunks", nlohmann::json::array({kA, nullptr, "../../etc/passwd"})));
  ExpectInvalid(with("chunks", nlohmann::json::array({kA, nullptr, std::string(63, 'a')})));
  ExpectInvalid(with("chunks", nlohmann::json::array({kA, nullptr, std::string(64, 'A')})));
  ExpectInvalid(with("chunks", nlohmann::json::array({kA, nullptr, 5})));
  // Still fine: the sample itself.
  EXPECT_NO_THROW(Manifest::FromJson(with("size", 10)));
}

// Manifests as the first release wrote them are read without a JSON DOM; every rule still
// holds there, and any other spelling of the same JSON reads the same through the general
// parser.
TEST(ManifestTest, TheCompactFormIsCheckedLikeAnyOther) {
  const std::string compact = FirstReleaseJson(Sample());
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string text = compact;
    const size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return text.replace(at, from.size(), to);
  };
  ExpectInvalid(replaced(kA, std::string(64, 'A')));
  ExpectInvalid(replaced(kA, std::string(63, 'a') + "\\"));
  ExpectInvalid(replaced(kA, "../" + std::string(61, 'a')));
  ExpectInvalid(replaced("\"" + kB + "\"]", "\"" + kB + "\",null]"));  // one chunk too many
  ExpectInvalid(replaced("\"" + kB + "\"]", "]"));                     // one too few
  ExpectInvalid(replaced(kDigest, "sha256:" + std::string(64, 'G')));
  ExpectInvalid(replaced(R"("chunk_size":4)", R"("chunk_size":0)"));
  // Other spellings of the same manifest: read by the general parser, to the same result.
  EXPECT_EQ(Manifest::FromJson(compact), Sample());
  EXPECT_EQ(Manifest::FromJson(nlohmann::json::parse(compact).dump(2)), Sample());
  EXPECT_EQ(Manifest::FromJson(replaced(R"({"version":1,)", R"({ "version": 1, )")), Sample());
}

}  // namespace
}  // namespace imagerelay
