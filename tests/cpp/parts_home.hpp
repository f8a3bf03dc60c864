// A home for the tests of the engine's parts: a real catalog with the account
// "default" and the regions bj and gz (their stores at <dir>/bj and <dir>/gz)
// in a temporary directory, the parts' `write`, which keeps the events it
// publishes, and files to import.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "engine/events.hpp"
#include "imagerelay/catalog.hpp"
#include "imagerelay/sha256.hpp"
#include "imagerelay/store.hpp"
#include "scratch_dir.hpp"

namespace imagerelay::testing_util {

class PartsHome : public ::testing::Test {
 protected:
  static constexpr uint64_t kChunk = 64 * 1024;  // the chunk size of the tests' imports

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

  // The stores of bj and gz, checked.
  std::map<std::string, std::shared_ptr<Store>> RegionStores() {
    std::map<std::string, std::shared_ptr<Store>> stores;
    for (const char* id : {"bj", "gz"}) {
      stores[id] = OpenStore((dir_ / id).string());
      stores[id]->Check();
    }
    return stores;
  }

  Image ImageInCatalog(const std::string& id) {
    Image image;
    catalog_->Read([&](CatalogTx& tx) { image = *tx.GetImage(id); });
    return image;
  }

  std::vector<Event> EventsOfType(std::string_view type) const {
    std::vector<Event> found;
    for (const auto& event : events_) {
      if (event.type == type) found.push_back(event);
    }
    return found;
  }

  // A file of `chunks` chunks of random bytes drawn from `seed`.
  std::filesystem::path RandomFile(const std::string& name, uint64_t chunks, unsigned seed) {
    const auto path = dir_ / name;
    std::ofstream out(path, std::ios::binary);
    std::mt19937 rng(seed);
    std::string data(chunks * kChunk, '\0');
    for (auto& c : data) c = static_cast<char>(rng());
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    return path;
  }

  // A sparse file of `size` bytes with a little random data: mostly holes, like the images
  // whose digest an import leaves to the digester.
  std::filesystem::path SparseFile(uint64_t size) {
    const auto path = dir_ / "disk.raw";
    std::ofstream out(path, std::ios::binary);
    std::mt19937 rng(7);
    std::string data(kChunk, '\0');
    for (uint64_t at : {uint64_t{0}, size / 3, size - kChunk}) {
      for (auto& c : data) c = static_cast<char>(rng());
      out.seekp(static_cast<std::streamoff>(at));
      out.write(data.data(), static_cast<std::streamsize>(data.size()));
    }
    return path;
  }

  // The whole-file digest an image of `path` gets ("sha256:<hex>").
  static std::string DigestOfFile(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> buffer(1 << 20);
    Sha256 hash;
    while (in.read(buffer.data(), static_cast<std::streamsize>(buffer.size())) || in.gcount()) {
      hash.Update(buffer.data(), static_cast<size_t>(in.gcount()));
    }
    return "sha256:" + hash.FinishHex();
  }

  ScratchDir dir_;
  std::unique_ptr<Catalog> catalog_;
  std::vector<Event> events_;  // published by Write
};

}  // namespace imagerelay::testing_util
