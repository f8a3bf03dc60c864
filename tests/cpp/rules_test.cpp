#include "imagerelay/rules.hpp"

#include "base/human_bytes.hpp"

#include <gtest/gtest.h>

#include "imagerelay/ids.hpp"

namespace imagerelay {
namespace {

std::vector<std::string> Codes(const std::vector<Problem>& problems) {
  std::vector<std::string> out;
  for (const auto& p : problems) out.push_back(p.code);
  return out;
}

Image Custom(const std::string& owner = "alice") {
  Image image;
  image.id = "m-abcdefgh";
  image.name = "golden";
  image.region = "bj";
  image.type = ImageType::kCustom;
  image.owner = owner;
  image.status = ImageStatus::kAvailable;
  image.size = 1 << 20;
  return image;
}

Image System() {
  Image image = Custom("");
  image.type = ImageType::kSystem;
  return image;
}

ReplicateFacts Regions() { return {{"bj", "gz", "su"}}; }

TEST(IdsTest, Formats) {
  EXPECT_TRUE(IsValidImageId("m-0a1b2c3d"));
  for (const char* bad :
       {"m-ABCDEFGH", "m-abc", "x-abcdefgh", "m-abcdefgh1", "../m-abcdef", "m-abc/efgh", ""}) {
    EXPECT_FALSE(IsValidImageId(bad)) << bad;
  }
  EXPECT_FALSE(IsValidImageId(std::string("m-abc\0efgh", 10)));
  EXPECT_TRUE(IsValidJobId("j-0a1b2c3d"));
  for (const char* bad : {"j-ABCDEFGH", "j-abc", "m-abcdefgh", "j-abcdefgh1", "../j-abcdef", ""}) {
    EXPECT_FALSE(IsValidJobId(bad)) << bad;
    auto problems = CheckJobIdFormat(bad);
    ASSERT_EQ(problems.size(), 1u) << bad;
    EXPECT_EQ(problems[0].code, codes::kInvalidParameter);
  }
  EXPECT_TRUE(CheckJobIdFormat("j-0a1b2c3d").empty());
  EXPECT_TRUE(IsValidRegionId("bj"));
  EXPECT_TRUE(IsValidRegionId("cn-north-1"));
  for (const char* bad :
       {"b", "Bj", "1bj", "bj/..", "../bj", "/bj", "b j", "abcdefghijklmnopqrstuvwxyzabcdefg"}) {
    EXPECT_FALSE(IsValidRegionId(bad)) << bad;
  }
  EXPECT_TRUE(IsValidAccountId("team-b"));
  EXPECT_TRUE(IsValidAccountId("ops@corp.example"));
  for (const char* bad : {"", "-x", "../x", "/abs", "a b", "a/b"}) {
    EXPECT_FALSE(IsValidAccountId(bad)) << bad;
  }
  EXPECT_FALSE(IsValidAccountId(std::string(65, 'a')));
  EXPECT_TRUE(IsValidImageName("golden-2024.01/x_y"));
  EXPECT_TRUE(IsValidImageName(std::string(65, 'a')));
  for (const char* bad : {"", "1abc", "a b", "-a", "/a"}) {
    EXPECT_FALSE(IsValidImageName(bad)) << bad;
  }
  EXPECT_FALSE(IsValidImageName(std::string(66, 'a')));
  EXPECT_FALSE(IsValidImageName(std::string("a\0b", 3)));
}

TEST(IdsTest, FreshIdsAreWellFormedAndDiffer) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    auto id = NewImageId();
    EXPECT_TRUE(IsValidImageId(id)) << id;
    seen.insert(id);
    EXPECT_TRUE(IsValidJobId(NewJobId()));
  }
  EXPECT_EQ(seen.size(), 1000u);
}

TEST(IdsTest, QuoteNeutralisesControlBytes) {
  EXPECT_EQ(Quote(std::string("a\0b\n", 4)), "'a\\x00b\\x0a'");
  EXPECT_EQ(Quote(std::string(200, 'x')).size(), 80u + 2 + 3);
}

TEST(VisibilityTest, SystemOwnAndShared) {
  EXPECT_TRUE(CanSee(System(), "anyone", false));
  EXPECT_TRUE(CanSee(Custom("alice"), "alice", false));
  EXPECT_FALSE(CanSee(Custom("alice"), "bob", false));
  EXPECT_TRUE(CanSee(Custom("alice"), "bob", true));
  Image deleted = Custom("alice");
  deleted.status = ImageStatus::kDeleted;
  EXPECT_FALSE(CanSee(deleted, "alice", false));
  EXPECT_EQ(TypeSeenBy(Custom("alice"), "bob"), "Sharing");
  EXPECT_EQ(TypeSeenBy(Custom("alice"), "alice"), "Custom");
  EXPECT_EQ(TypeSeenBy(System(), "alice"), "System");
}

TEST(ReplicateRulesTest, ValidRequestPasses) {
  std::string name = "copy";
  EXPECT_TRUE(CheckReplicate(Custom(), "alice", {"gz", "su", "gz"}, &name, Regions(), {}).empty());
}

TEST(ReplicateRulesTest, EachRuleHasItsCode) {
  Limits limits;
  EXPECT_EQ(Codes(CheckReplicate(Custom(), "bob", {"gz"}, nullptr, Regions(), limits)),
            std::vector<std::string>{codes::kAccessDenied});
  // A System image has no owner: the type rule answers, never AccessDenied.
  EXPECT_EQ(Codes(CheckReplicate(System(), "bob", {"gz"}, nullptr, Regions(), limits)),
            std::vector<std::string>{codes::kNotSupportCopy});
  Limits small;
  small.max_copy_bytes = 1000;
  EXPECT_EQ(Codes(CheckReplicate(Custom(), "alice", {"gz"}, nullptr, Regions(), small)),
            std::vector<std::string>{codes::kLargeImageCopyForbidden});
  Image busy = Custom();
  busy.status = ImageStatus::kReplicating;
  EXPECT_EQ(Codes(CheckReplicate(busy, "alice", {"gz"}, nullptr, Regions(), limits)),
            std::vector<std::string>{codes::kImageStatusForbidden});
  EXPECT_EQ(Codes(CheckReplicate(Custom(), "alice", {}, nullptr, Regions(), limits)),
            std::vector<std::string>{codes::kDestRegionIsEmpty});
  EXPECT_EQ(Codes(CheckReplicate(Custom(), "alice", {"bj"}, nullptr, Regions(), limits)),
            std::vector<std::string>{codes::kRegionNotSupportCopy});
  EXPECT_EQ(Codes(CheckReplicate(Custom(), "alice", {"nowhere"}, nullptr, Regions(), limits)),
            std::vector<std::string>{codes::kRegionNotSupportCopy});
  std::string bad = "9lives";
  EXPECT_EQ(Codes(CheckReplicate(Custom(), "alice", {"gz"}, &bad, Regions(), limits)),
            std::vector<std::string>{codes::kInvalidParameter});
}

TEST(ReplicateRulesTest, EveryFailedRuleIsReportedInOrder) {
  Limits small;
  small.max_copy_bytes = 10;
  Image busy = Custom();
  busy.status = ImageStatus::kReplicating;
  std::string bad = "";
  EXPECT_EQ(Codes(CheckReplicate(busy, "bob", {"bj", "xx"}, &bad, Regions(), small)),
            (std::vector<std::string>{codes::kAccessDenied, codes::kLargeImageCopyForbidden,
                                      codes::kImageStatusForbidden, codes::kRegionNotSupportCopy,
                                      codes::kRegionNotSupportCopy, codes::kInvalidParameter}));
}

ShareFacts Facts(std::set<std::string> known, std::vector<std::string> current = {},
                 std::map<std::string, int> accepted = {}) {
  return ShareFacts{std::move(known), std::move(current), std::move(accepted)};
}

TEST(ShareRulesTest, EachRuleHasItsCode) {
  Limits limits;
  auto known = Facts({"bob", "carol", "alice"});
  EXPECT_TRUE(CheckShare(Custom(), "alice", {"bob", "carol"}, known, limits).empty());
  EXPECT_EQ(Codes(CheckShare(Custom(), "bob", {"carol"}, known, limits)),
            std::vector<std::string>{codes::kAccessDenied});
  EXPECT_EQ(Codes(CheckShare(System(), "bob", {"carol"}, known, limits)),
            std::vector<std::string>{codes::kUnCustomImageCannotBeShared});
  Image creating = Custom();
  creating.status = ImageStatus::kCreating;
  EXPECT_EQ(Codes(CheckShare(creating, "alice", {"bob"}, known, limits)),
            std::vector<std::string>{codes::kImageStatusForbidden});
  EXPECT_EQ(Codes(CheckShare(Custom(), "alice", {}, known, limits)),
            std::vector<std::string>{codes::kAccountListIsEmpty});
  EXPECT_EQ(Codes(CheckShare(Custom(), "alice", {"ghost"}, known, limits)),
            std::vector<std::string>{codes::kInvalidAccount});
  EXPECT_EQ(Codes(CheckShare(Custom(), "alice", {"alice"}, known, limits)),
            std::vector<std::string>{codes::kCannotShareToOwner});
  EXPECT_EQ(Codes(CheckShare(Custom(), "alice", {"bob"}, Facts({"bob"}, {"bob"}), limits)),
            std::vector<std::string>{codes::kAccountHasBeenShared});
  Limits two;
  two.max_share_accounts = 2;
  EXPECT_EQ(Codes(CheckShare(Custom(), "alice", {"carol"}, Facts({"carol"}, {"x", "y"}), two)),
            std::vector<std::string>{codes::kExceedSharedToUserNumQuota});
  Limits one;
  one.max_accepted_shares = 1;
  EXPECT_EQ(Codes(CheckShare(Custom(), "alice", {"bob"}, Facts({"bob"}, {}, {{"bob", 1}}), one)),
            std::vector<std::string>{codes::kExceedAcceptSharedImageNumQuota});
}

TEST(ShareRulesTest, DuplicatesAreFoldedAndAllProblemsListed) {
  Limits limits;
  auto problems =
      CheckShare(Custom(), "alice", {"ghost", "alice", "ghost"}, Facts({"alice"}), limits);
  EXPECT_EQ(Codes(problems),
            (std::vector<std::string>{codes::kInvalidAccount, codes::kCannotShareToOwner}));
}

TEST(UnshareRulesTest, Codes) {
  auto facts = Facts({"bob", "carol"}, {"bob"});
  EXPECT_TRUE(CheckUnshare(Custom(), "alice", {"bob"}, facts).empty());
  EXPECT_EQ(Codes(CheckUnshare(Custom(), "alice", {"carol"}, facts)),
            std::vector<std::string>{codes::kAccountNotShared});
  EXPECT_EQ(Codes(CheckUnshare(Custom(), "alice", {}, facts)),
            std::vector<std::string>{codes::kAccountListIsEmpty});
  EXPECT_EQ(Codes(CheckUnshare(Custom(), "bob", {"bob"}, facts)),
            std::vector<std::string>{codes::kAccessDenied});
  EXPECT_EQ(Codes(CheckUnshare(Custom(), "alice", {"ghost"}, facts)),
            std::vector<std::string>{codes::kInvalidAccount});
}

TEST(DeleteRulesTest, Codes) {
  EXPECT_TRUE(CheckDelete(Custom(), "alice", 0).empty());
  EXPECT_EQ(Codes(CheckDelete(Custom(), "bob", 0)), std::vector<std::string>{codes::kAccessDenied});
  EXPECT_EQ(Codes(CheckDelete(System(), "bob", 0)),
            std::vector<std::string>{codes::kUnCustomImageCannotBeDeleted});
  Image creating = Custom();
  creating.status = ImageStatus::kCreating;
  EXPECT_EQ(Codes(CheckDelete(creating, "alice", 0)),
            std::vector<std::string>{codes::kCreatingImageCannotBeDeleted});
  Image busy = Custom();
  busy.status = ImageStatus::kReplicating;
  EXPECT_EQ(Codes(CheckDelete(busy, "alice", 0)),
            std::vector<std::string>{codes::kImageStatusForbidden});
  EXPECT_EQ(Codes(CheckDelete(Custom(), "alice", 2)),
            std::vector<std::string>{codes::kImageHasBeenSharedToOthers});
  Image failed = Custom();
  failed.status = ImageStatus::kCreateFailed;
  EXPECT_TRUE(CheckDelete(failed, "alice", 0).empty());
}

TEST(RenameRulesTest, Codes) {
  EXPECT_TRUE(CheckRename(Custom(), "alice", "better").empty());
  EXPECT_EQ(Codes(CheckRename(Custom(), "bob", "better")),
            std::vector<std::string>{codes::kAccessDenied});
  EXPECT_EQ(Codes(CheckRename(Custom(), "alice", "../etc")),
            std::vector<std::string>{codes::kInvalidParameter});
  Image busy = Custom();
  busy.status = ImageStatus::kReplicating;
  EXPECT_EQ(Codes(CheckRename(busy, "alice", "x")),
            std::vector<std::string>{codes::kImageStatusForbidden});
}

TEST(ImportRulesTest, Codes) {
  Limits limits;
  ImportRequest request;
  request.source = "/tmp/x";
  request.region = "bj";
  request.name = "golden";
  const ImportSourceFacts raw{100, {"raw", 100}};
  EXPECT_TRUE(CheckImport(request, true, raw, limits).empty());
  EXPECT_EQ(Codes(CheckImport(request, false, raw, limits)),
            std::vector<std::string>{codes::kNoSuchRegion});
  limits.max_import_bytes = 10;
  EXPECT_EQ(Codes(CheckImport(request, true, raw, limits)),
            std::vector<std::string>{codes::kLargeImageImportForbidden});
  request.format = "iso";
  request.name = "";
  EXPECT_EQ(Codes(CheckImport(request, false, std::nullopt, limits)),
            (std::vector<std::string>{codes::kNoSuchRegion, codes::kInvalidParameter,
                                      codes::kInvalidParameter}));
}

// The size rules weigh the disk the file holds, not the file; a declared format must be the
// header's.
TEST(ImportRulesTest, TheDiskDecidesNotTheFile) {
  Limits limits;
  ImportRequest request;
  request.source = "/tmp/big.qcow2";
  request.region = "bj";
  request.name = "golden";
  // 300 GiB disk, 64 MiB file: within the 500 GiB import limit.
  const ImportSourceFacts qcow2{64ULL << 20, {"qcow2", 300ULL << 30}};
  EXPECT_TRUE(CheckImport(request, true, qcow2, limits).empty());
  limits.max_import_bytes = 200ULL << 30;
  auto problems = CheckImport(request, true, qcow2, limits);
  ASSERT_EQ(Codes(problems), std::vector<std::string>{codes::kLargeImageImportForbidden});
  EXPECT_NE(problems[0].message.find("300.0 GiB"), std::string::npos) << problems[0].message;
  EXPECT_NE(problems[0].message.find("200.0 GiB"), std::string::npos) << problems[0].message;
  limits = Limits{};
  request.format = "raw";
  problems = CheckImport(request, true, qcow2, limits);
  ASSERT_EQ(Codes(problems), std::vector<std::string>{codes::kInvalidParameter});
  EXPECT_NE(problems[0].message.find("is a qcow2 image"), std::string::npos);
  request.format = "qcow2";
  EXPECT_TRUE(CheckImport(request, true, qcow2, limits).empty());

  Image image = Custom();
  image.size = 64ULL << 20;
  image.virtual_size = 300ULL << 30;
  problems = CheckReplicate(image, image.owner, {"gz"}, nullptr, Regions(), limits);
  ASSERT_EQ(Codes(problems), std::vector<std::string>{codes::kLargeImageCopyForbidden});
  EXPECT_NE(problems[0].message.find("300.0 GiB"), std::string::npos) << problems[0].message;
}

TEST(SharedUsersRulesTest, OwnerOnly) {
  EXPECT_TRUE(CheckSharedUsers(Custom(), "alice").empty());
  EXPECT_EQ(Codes(CheckSharedUsers(Custom(), "bob")),
            std::vector<std::string>{codes::kAccessDenied});
}

}  // namespace
}  // namespace imagerelay

namespace imagerelay {
namespace {

TEST(LimitsRulesTest, EveryLimitOutOfItsRangeIsAProblem) {
  EXPECT_TRUE(CheckLimits(Limits{}).empty());
  Limits bad;
  bad.chunk_size = 100;
  bad.max_tasks_per_region = 0;
  bad.max_share_accounts = -1;
  bad.bandwidth = UINT64_MAX;  // past 2**63-1
  const auto problems = CheckLimits(bad);
  ASSERT_EQ(problems.size(), 4u);
  for (const auto& p : problems) EXPECT_EQ(p.code, codes::kInvalidParameter);
  EXPECT_EQ(problems[1].message,
            "Limits.chunk_size must be an integer between 4096 and 268435456, got 100");
  Limits top;
  top.chunk_size = 256 << 20;
  top.max_copy_bytes = INT64_MAX;
  top.max_share_accounts = INT32_MAX;
  top.max_accepted_shares = 0;
  EXPECT_TRUE(CheckLimits(top).empty());
}

TEST(HumanBytesTest, UnitsForPeople) {
  EXPECT_EQ(HumanBytes(0), "0 B");
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1024), "1.0 KiB");
  EXPECT_EQ(HumanBytes(3 * 1024 * 1024 / 2), "1.5 MiB");
  EXPECT_EQ(HumanBytes(500ULL << 30), "500.0 GiB");
  EXPECT_EQ(HumanBytes(3ULL << 40), "3.0 TiB");
  EXPECT_EQ(HumanBytes(2048ULL << 40), "2048.0 TiB");
}

TEST(SizeLimitMessagesTest, GiveUnitsTheLimitAndWhatToDo) {
  Limits limits;
  ImportRequest request;
  request.source = "/data/big.raw";
  request.region = "bj";
  request.name = "big";
  auto problems =
      CheckImport(request, true, ImportSourceFacts{600ULL << 30, {"raw", 600ULL << 30}}, limits);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].message,
            "source '/data/big.raw' holds a disk of 600.0 GiB (644245094400 bytes), over the "
            "import limit of 500.0 GiB (536870912000 bytes); import a smaller disk, or open the "
            "home with a higher Limits.max_import_bytes");
  Image image;
  image.id = "m-00000001";
  image.owner = "alice";
  image.status = ImageStatus::kAvailable;
  image.region = "bj";
  image.size = 201ULL << 30;
  problems = CheckReplicate(image, "alice", {"gz"}, nullptr, {{"bj", "gz"}}, limits);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].code, codes::kLargeImageCopyForbidden);
  EXPECT_NE(problems[0].message.find("holds a disk of 201.0 GiB (215822106624 bytes), over the "
                                     "copy limit of 200.0 GiB (214748364800 bytes); copy a "
                                     "smaller image"),
            std::string::npos)
      << problems[0].message;
}

TEST(RemoveRulesTest, RegionInUseListsWhatUsesIt) {
  EXPECT_TRUE(CheckRemoveRegion("hk", {}).empty());
  RegionUse use;
  use.images = {"m-1", "m-2", "m-3", "m-4", "m-5", "m-6", "m-7"};
  auto problems = CheckRemoveRegion("hk", use);
  ASSERT_EQ(Codes(problems), std::vector<std::string>{codes::kRegionInUse});
  EXPECT_NE(problems[0].message.find("7 image(s) (m-1, m-2, m-3, m-4, m-5 and 2 more)"),
            std::string::npos)
      << problems[0].message;
  use.jobs_in_flight = {"j-1"};
  EXPECT_EQ(Codes(CheckRemoveRegion("hk", use)),
            (std::vector<std::string>{codes::kRegionInUse, codes::kRegionInUse}));
}

TEST(RemoveRulesTest, AccountInUseGivesOneProblemPerUse) {
  EXPECT_TRUE(CheckRemoveAccount("bob", {}).empty());
  AccountUse use{{"m-1"}, {"m-2"}, {"j-3"}};
  auto problems = CheckRemoveAccount("bob", use);
  ASSERT_EQ(problems.size(), 3u);
  EXPECT_NE(problems[0].message.find("owns 1 image(s) (m-1); delete them first"),
            std::string::npos);
  EXPECT_NE(problems[1].message.find("(m-2); their owners must unshare them first"),
            std::string::npos);
  EXPECT_NE(problems[2].message.find("copies in flight (job j-3)"), std::string::npos);
  for (const auto& p : problems) EXPECT_EQ(p.code, codes::kAccountInUse);
}

}  // namespace
}  // namespace imagerelay
