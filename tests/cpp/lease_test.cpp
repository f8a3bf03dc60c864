#include "engine/lease.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "scratch_dir.hpp"

namespace imagerelay {
namespace {

TEST(LeaseTest, EncodesAndDecodesAnImportsLease) {
  const Lease lease{"host-a:123:abc", 1'700'000'000'000'000};
  const Lease back = Lease::Decode(lease.Encode());
  EXPECT_EQ(back.owner, lease.owner);
  EXPECT_EQ(back.expires_us, lease.expires_us);
  // Garbled or empty settings are nobody's lease (the import is recovered, not stuck).
  for (const char* text : {"", "no-bar", "owner|", "owner|12x", "owner|-"}) {
    EXPECT_EQ(Lease::Decode(text).owner, "") << text;
  }
}

TEST(LeaseTest, AHolderIsAliveUntilItsTimeUnlessItsProcessHereIsGone) {
  const std::string host = "host-a";
  const std::string self = host + ":" + std::to_string(::getpid()) + ":me";
  const TimeUs now = 1'000'000;
  EXPECT_FALSE(LeaseHolderAlive({"", now + 10}, now, host, self));           // nobody
  EXPECT_FALSE(LeaseHolderAlive({self, now - 1}, now, host, self));          // expired
  EXPECT_TRUE(LeaseHolderAlive({self, now + 10}, now, host, self));          // this worker
  EXPECT_TRUE(LeaseHolderAlive({"host-b:1:x", now + 10}, now, host, self));  // cannot tell
  // A process of this host that no longer exists (pid_max is far below this).
  EXPECT_FALSE(LeaseHolderAlive({host + ":2147483600:x", now + 10}, now, host, self));
  // Another live process here (this one, under another nonce).
  EXPECT_TRUE(LeaseHolderAlive({host + ":" + std::to_string(::getpid()) + ":other", now + 10}, now,
                               host, self));
}

TEST(LeaseTest, AnImportsLeaseIsASettingOfItsKeyAndEndsAsNobodys) {
  testing_util::ScratchDir dir;
  auto catalog = OpenSqliteCatalog(dir / "catalog.db");
  catalog->Write([](CatalogTx& tx) {
    EXPECT_EQ(ImportLease(tx, "m-aaaaaaa1").owner, "");  // none yet
    PutImportLease(tx, "m-aaaaaaa1", Lease{"host-a:123:abc", 42});
    const Lease lease = ImportLease(tx, "m-aaaaaaa1");
    EXPECT_EQ(lease.owner, "host-a:123:abc");
    EXPECT_EQ(lease.expires_us, 42);
    EXPECT_EQ(tx.GetSetting("import:m-aaaaaaa1"), "host-a:123:abc|42");  // as homes keep it
    PutImportLease(tx, "m-aaaaaaa1", Lease{});
    EXPECT_EQ(ImportLease(tx, "m-aaaaaaa1").owner, "");
    EXPECT_EQ(tx.GetSetting("import:m-aaaaaaa1"), "");
  });
  EXPECT_EQ(ImportKey("m-aaaaaaa1"), "import:m-aaaaaaa1");
  EXPECT_TRUE(IsImportKey(ImportKey("m-aaaaaaa1")));
  EXPECT_FALSE(IsImportKey("m-aaaaaaa1"));  // a copy's
}

}  // namespace
}  // namespace imagerelay
