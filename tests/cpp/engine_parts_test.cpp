// The engine's small parts on their own: the policy set and the change notifier.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "engine/change_notifier.hpp"
#include "engine/policy_set.hpp"
#include "imagerelay/error.hpp"

namespace imagerelay {
namespace {

TEST(PolicySetTest, TheFirstRejectionRefusesAndARemovedPolicyIsGone) {
  PolicySet policies;
  PolicyRequest request{.action = "share",
                        .account = "bob",
                        .image = std::nullopt,
                        .to = {},
                        .accounts = {"eve"},
                        .name = ""};
  EXPECT_NO_THROW(policies.Check(request));  // none: everything is allowed
  int calls = 0;
  policies.Add([&](const PolicyRequest&) -> std::optional<std::string> {
    ++calls;
    return std::nullopt;
  });
  const int64_t no_eve = policies.Add([](const PolicyRequest& r) -> std::optional<std::string> {
    if (!r.accounts.empty() && r.accounts[0] == "eve") return "not with eve";
    return std::nullopt;
  });
  try {
    policies.Check(request);
    FAIL() << "allowed";
  } catch (const ValidationError& e) {
    EXPECT_EQ(e.code(), codes::kPolicyViolation);
    EXPECT_EQ(e.message(), "not with eve");
  }
  EXPECT_EQ(calls, 1);  // in the order they were added
  policies.Remove(no_eve);
  policies.Remove(no_eve);  // twice: nothing
  EXPECT_NO_THROW(policies.Check(request));
}

TEST(ChangeNotifierTest, AChangeAfterTheGenerationWasTakenIsNeverMissed) {
  ChangeNotifier changes;
  const auto far = std::chrono::steady_clock::now() + std::chrono::hours(1);
  const uint64_t seen = changes.Generation();
  changes.Notify();  // before the wait starts: the wait returns at once
  changes.WaitForChange(seen, far);
  EXPECT_NE(changes.Generation(), seen);
  const uint64_t now = changes.Generation();
  std::thread notifier([&] { changes.Notify(); });
  changes.WaitForChange(now, far);  // woken by the other thread, not by the hour
  notifier.join();
  // With no change, it returns at `until`.
  changes.WaitForChange(changes.Generation(), std::chrono::steady_clock::now());
}

}  // namespace
}  // namespace imagerelay
