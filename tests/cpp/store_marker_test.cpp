// A store's marker and the home that owns it (store/store_marker.hpp).
#include "store/store_marker.hpp"

#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "base/file_util.hpp"
#include "imagerelay/error.hpp"
#include "killed_child.hpp"
#include "scratch_dir.hpp"
#include "store/local_store.hpp"
#include "test_bytes.hpp"

namespace imagerelay {
namespace {

namespace fs = std::filesystem;
using Action = MarkerVerdict::Action;

const StoreOwner kHomeA{.id = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", .path = "/data/home-a"};
const StoreOwner kHomeB{.id = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", .path = "/data/home-b"};
const std::string kPlace = "file:/data/stores/hk";

StoreClaim Reader(const StoreOwner& me, bool ours_by_place = false,
                  const std::string& place = kPlace) {
  return {.me = me, .place = place, .ours_by_place = ours_by_place, .unowned_is_theirs = {}};
}

TEST(StoreMarkerTest, AMarkerWithoutAnOwnerIsClaimedByTheHomeThatChecksIt) {
  const MarkerVerdict verdict = JudgeMarker(StoreMarkerText(), Reader(kHomeA));
  EXPECT_EQ(verdict.action, Action::kRewrite);
  EXPECT_EQ(verdict.text, StoreMarkerText(kHomeA, kPlace));
  EXPECT_EQ(CheckStoreMarker(verdict.text), "");
  // Its own marker is kept as it is.
  EXPECT_EQ(JudgeMarker(StoreMarkerText(kHomeA, kPlace), Reader(kHomeA)).action, Action::kKeep);
}

TEST(StoreMarkerTest, AnotherHomesStoreIsRefusedSayingWhichHome) {
  const MarkerVerdict verdict = JudgeMarker(StoreMarkerText(kHomeA, kPlace), Reader(kHomeB));
  EXPECT_EQ(verdict.action, Action::kRefuse);
  EXPECT_NE(verdict.problem.find("another imagerelay home at /data/home-a"), std::string::npos)
      << verdict.problem;
  EXPECT_NE(verdict.problem.find("regions move"), std::string::npos) << verdict.problem;
}

TEST(StoreMarkerTest, WhatAMarkerSaysIsShownPrintableAndShort) {
  const StoreOwner hostile{.id = "\x1b[2Jid",
                           .path = "/x\n\x1b]0;owned\x07" + std::string(500, 'p')};
  const MarkerVerdict verdict = JudgeMarker(StoreMarkerText(hostile, kPlace), Reader(kHomeB));
  ASSERT_EQ(verdict.action, Action::kRefuse);
  for (char c : verdict.problem) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << verdict.problem;
  EXPECT_LT(verdict.problem.size(), 800U);
}

TEST(StoreMarkerTest, AStoreInsideTheHomeIsTheHomesWhoeverMarkedIt) {
  // A copied home's stores are copies: the copy takes them, under its own identity.
  const MarkerVerdict verdict = JudgeMarker(StoreMarkerText(kHomeA, kPlace), Reader(kHomeB, true));
  EXPECT_EQ(verdict.action, Action::kRewrite);
  EXPECT_EQ(verdict.text, StoreMarkerText(kHomeB, kPlace));
}

TEST(StoreMarkerTest, ACallerWithoutAnOwnerLeavesTheOwnerInPlace) {
  EXPECT_EQ(JudgeMarker(StoreMarkerText(kHomeA, kPlace), Reader(StoreOwner{})).action,
            Action::kKeep);
  // An earlier version's marker is brought up to date, its owner kept.
  const std::string old_version =
      R"({"format": "imagerelay-store", "version": 1, "home": ")" + kHomeA.id + R"("})";
  const MarkerVerdict verdict = JudgeMarker(old_version, Reader(StoreOwner{}));
  EXPECT_EQ(verdict.action, Action::kRewrite);
  const auto json = nlohmann::json::parse(verdict.text);
  EXPECT_EQ(json["home"], kHomeA.id);
  EXPECT_EQ(json["version"], 2);
}

TEST(StoreMarkerTest, AnOwnerOfAnUnknownShapeIsNoOwner) {
  for (const char* text : {R"({"format": "imagerelay-store", "version": 2, "home": 7})",
                           R"({"format": "imagerelay-store", "version": 2, "home": ""})",
                           R"({"format": "imagerelay-store", "version": 2, "home": null})"}) {
    EXPECT_EQ(JudgeMarker(text, Reader(kHomeB)).action, Action::kRewrite) << text;
    EXPECT_EQ(ReleasedMarker(text, Reader(kHomeB)), "") << text;
  }
  // A path that is not UTF-8 is written all the same (replaced), and read back.
  const StoreOwner odd{.id = kHomeA.id, .path = std::string("/data/\xff\xfe")};
  EXPECT_EQ(CheckStoreMarker(StoreMarkerText(odd, kPlace)), "");
  EXPECT_EQ(JudgeMarker(StoreMarkerText(odd, kPlace), Reader(kHomeA)).action, Action::kRewrite);
}

TEST(StoreMarkerTest, AStoreTakenForTheOriginalsIsNotClaimedByTheCopy) {
  StoreClaim copy = Reader(kHomeB);
  copy.unowned_is_theirs = "taken for the original's";
  for (const std::string& unowned :
       {StoreMarkerText(), StoreMarkerText(kHomeA, "file:/elsewhere")}) {  // none, a copy's
    const MarkerVerdict verdict = JudgeMarker(unowned, copy);
    EXPECT_EQ(verdict.action, Action::kRefuse);
    EXPECT_EQ(verdict.problem, "taken for the original's");
  }
  // Its own (marked by this home since) and, in its own directory, any: taken as ever.
  EXPECT_EQ(JudgeMarker(StoreMarkerText(kHomeB, kPlace), copy).action, Action::kKeep);
  copy.ours_by_place = true;
  EXPECT_EQ(JudgeMarker(StoreMarkerText(), copy).action, Action::kRewrite);
  // A store without any marker (an earlier release's layout) likewise.
  testing_util::ScratchDir dir;
  fs::create_directories(dir / "old" / "manifests");
  LocalStore old(dir / "old");
  copy.ours_by_place = false;
  old.SetOwner(copy);
  EXPECT_THROW(old.Check(), TransferError);
  EXPECT_FALSE(fs::exists(dir / "old" / std::string(kStoreMarker)));
}

TEST(StoreMarkerTest, OnlyItsOwnerReleasesAStore) {
  const std::string marked = StoreMarkerText(kHomeA, kPlace);
  EXPECT_EQ(ReleasedMarker(marked, Reader(kHomeA)), StoreMarkerText());
  EXPECT_EQ(ReleasedMarker(marked, Reader(kHomeB)), "");
  EXPECT_EQ(ReleasedMarker(marked, Reader(StoreOwner{})), "");
  EXPECT_EQ(ReleasedMarker(StoreMarkerText(), Reader(kHomeA)), "");
  EXPECT_EQ(ReleasedMarker("not json", Reader(kHomeA)), "");
}

TEST(StoreMarkerTest, AMarkerWrittenForAnotherPlaceIsACopysNoHomesYet) {
  // A store copied elsewhere (a bigger disk, a copied home's region): the copy is taken by
  // the home that checks it; the original, where its marker says, stays its home's.
  const std::string marked = StoreMarkerText(kHomeA, kPlace);
  const MarkerVerdict copy = JudgeMarker(marked, Reader(kHomeB, false, "file:/big/hk"));
  EXPECT_EQ(copy.action, Action::kRewrite);
  EXPECT_EQ(copy.text, StoreMarkerText(kHomeB, "file:/big/hk"));
  EXPECT_EQ(JudgeMarker(marked, Reader(kHomeB)).action, Action::kRefuse);
  // Its own store, moved: taken again, its place brought up to date.
  EXPECT_EQ(JudgeMarker(marked, Reader(kHomeA, false, "file:/big/hk")).action, Action::kRewrite);
  // A marker without a place (of this release's first form) is judged by its home alone.
  const std::string no_place =
      R"({"format": "imagerelay-store", "version": 2, "home": ")" + kHomeA.id + R"("})";
  EXPECT_EQ(JudgeMarker(no_place, Reader(kHomeB, false, "file:/big/hk")).action, Action::kRefuse);
}

TEST(StoreMarkerTest, ALocalStoreServesOneHomeUntilReleased) {
  testing_util::ScratchDir dir;
  const fs::path root = dir / "store";
  auto marker = [&] { return testing_util::ReadFileBytes(root / std::string(kStoreMarker)); };
  LocalStore a(root);
  a.SetOwner(Reader(kHomeA));
  a.Create();
  EXPECT_EQ(marker(), StoreMarkerText(kHomeA, kPlace));

  LocalStore b(root);
  b.SetOwner(Reader(kHomeB));
  try {
    b.Check();
    ADD_FAILURE() << "home B took home A's store";
  } catch (const TransferError& e) {
    EXPECT_EQ(e.code(), codes::kStoreUnavailable);
    EXPECT_NE(e.message().find("belongs to another imagerelay home at /data/home-a"),
              std::string::npos)
        << e.message();
  }
  EXPECT_EQ(marker(), StoreMarkerText(kHomeA, kPlace));  // untouched
  b.Release();                                           // not B's to release
  EXPECT_EQ(marker(), StoreMarkerText(kHomeA, kPlace));

  a.Release();
  EXPECT_EQ(marker(), StoreMarkerText());
  b.Check();  // a check leaves a store no home owns as it is (one being released, maybe)
  EXPECT_EQ(marker(), StoreMarkerText());
  b.ClaimForOwner(/*claim_unowned=*/false);
  EXPECT_EQ(marker(), StoreMarkerText());
  b.ClaimForOwner();  // the home opening it claims it
  EXPECT_EQ(marker(), StoreMarkerText(kHomeB, kPlace));

  // Where the store lies in home A's own directory, A takes it back.
  LocalStore a_by_place(root);
  a_by_place.SetOwner(Reader(kHomeA, true));
  a_by_place.ClaimForOwner();
  EXPECT_EQ(marker(), StoreMarkerText(kHomeA, kPlace));
}

// A release killed between its marker's sync and rename leaves the marker's temporary file.
// Once released, no open of the home looks in the store again: the next release removes it
// (it used to stay, garbage, in a store no region names).
TEST(StoreMarkerTest, AReleaseKilledBeforeItsRenameLeavesNothingOnceReleasedAgain) {
  testing_util::ScratchDir dir;
  const fs::path root = dir / "store";
  LocalStore a(root);
  a.SetOwner(Reader(kHomeA));
  a.Create();
  auto temporaries = [&] {
    size_t n = 0;
    for (const auto& e : fs::directory_iterator(root)) {
      n += e.path().filename().string().starts_with(kTempPrefix);
    }
    return n;
  };
  // As a kill -9 in the release, between its marker's sync and rename.
  ASSERT_EQ(testing_util::ExitCodeOfStepKilledAt("file.synced@1", [&] { a.Release(); }),
            kFailPointExitCode);
  EXPECT_EQ(temporaries(), 1u);
  EXPECT_EQ(testing_util::ReadFileBytes(root / std::string(kStoreMarker)),
            StoreMarkerText(kHomeA, kPlace));  // not released yet: still A's

  a.Release();  // the release done again (move_region or remove_region run again)
  EXPECT_EQ(testing_util::ReadFileBytes(root / std::string(kStoreMarker)), StoreMarkerText());
  EXPECT_EQ(temporaries(), 0u);
}

}  // namespace
}  // namespace imagerelay
