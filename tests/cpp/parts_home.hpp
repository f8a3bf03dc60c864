// A home for the tests of the engine's parts: a real catalog with the account
// "default" and the regions bj and gz (their stores at <dir>/bj and <dir>/gz)
// in a temporary directory, and the parts' `write`, which keeps the events it
// publishes.
#pragma once

#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "engine/events.hpp"
#include "imagerelay/catalog.hpp"
#include "scratch_dir.hpp"

namespace imagerelay::testing_util {

class PartsHome : public ::testing::Test {
 protected:
  PartsHome() : catalog_(OpenSqliteCatalog(dir_ / "catalog.db")) {
    catalog_->Write([&](CatalogTx& tx) {
      tx.InsertAccount({"default", "default"});
      for (const char* id : {"bj", "gz"}) tx.InsertRegion({id, id, (dir_ / id).string()});
    });
  }

  // As the engine's Write: runs `fn` in a write transaction, then publishes
  // (here: keeps) the events it appended.
  void Write(const std::function<void(CatalogTx&, PendingEvents&)>& fn) {
    PendingEvents pending;
    catalog_->Write([&](CatalogTx& tx) {
      pending = PendingEvents{};
      fn(tx, pending);
    });
    for (auto& event : pending.Take()) events_.push_back(std::move(event));
  }

  std::vector<Event> EventsOfType(std::string_view type) const {
    std::vector<Event> found;
    for (const auto& event : events_) {
      if (event.type == type) found.push_back(event);
    }
    return found;
  }

  ScratchDir dir_;
  std::unique_ptr<Catalog> catalog_;
  std::vector<Event> events_;  // published by Write
};

}  // namespace imagerelay::testing_util
