#include "imagerelay/transfer.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstddef>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/token_bucket.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
#include "test_bytes.hpp"

namespace imagerelay {
namespace {

using Kind = TransferOutcome::Kind;

constexpr uint64_t kTransferChunk = 4096;

// An in-memory Store that counts calls and injects faults: transient errors for the first N
// calls on a chunk, permanent errors, corrupt reads, slow operations, and hooks that run
// after each call (to cancel a token at a known point).
class FakeStore : public Store {
 public:
  enum class Op { kGet, kPut, kHas };
  static constexpr const char* kAnyChunk = "*";
  static constexpr int kForever = INT_MAX;
  using Hook = std::function<void(const std::string& hash)>;

  explicit FakeStore(std::string uri) : uri_(std::move(uri)) {}

  std::string uri() const override { return uri_; }
  void Check() override {}

  bool HasChunk(const std::string& hash, const CancelToken* /*cancel*/ = nullptr) override {
    std::lock_guard lock(mu_);
    return chunks_.contains(hash);
  }

  std::vector<bool> HasChunks(const std::vector<std::string>& hashes,
                              const CancelToken* /*cancel*/ = nullptr,
                              const std::vector<uint64_t>& lengths = {}) override {
    std::vector<bool> present;
    std::function<void()> hook;
    {
      std::lock_guard lock(mu_);
      hook = std::exchange(after_first_lookup_, nullptr);
      ++has_chunks_calls_;
      lookups_.push_back(hashes);
      ThrowFault(Op::kHas, kAnyChunk);
      for (size_t i = 0; i < hashes.size(); ++i) {
        auto it = chunks_.find(hashes[i]);
        present.push_back(it != chunks_.end() &&
                          (lengths.empty() || it->second.size() == lengths[i]));
      }
    }
    if (hook) hook();
    return present;
  }

  uint64_t PutChunk(const std::string& hash, std::span<const std::byte> data,
                    const CancelToken* /*cancel*/ = nullptr) override {
    std::this_thread::sleep_for(put_delay_);
    {
      std::lock_guard lock(mu_);
      ++put_calls_[hash];
      ++total_put_calls_;
      ThrowFault(Op::kPut, hash);
      if (!lose_writes_) chunks_[hash].assign(data.begin(), data.end());
      bytes_written_ += data.size();
    }
    if (after_put_) after_put_(hash);
    return data.size();
  }

  bool WaitsOnServer() const override { return on_server_; }
  bool ClaimToWrite(const std::string& hash) override {
    std::lock_guard lock(mu_);
    return !known_.contains(hash);
  }

  void GetChunk(const std::string& hash, std::vector<std::byte>& out,
                const CancelToken* /*cancel*/ = nullptr) override {
    {
      std::lock_guard lock(mu_);
      most_gets_at_once_ = std::max(most_gets_at_once_, ++gets_now_);
    }
    std::this_thread::sleep_for(get_delay_);
    {
      std::lock_guard lock(mu_);
      --gets_now_;
    }
    {
      std::lock_guard lock(mu_);
      ++get_calls_[hash];
      ++total_get_calls_;
      ThrowFault(Op::kGet, hash);
      auto it = chunks_.find(hash);
      if (it == chunks_.end()) throw TransferError(codes::kTransferFailed, "no chunk " + hash);
      out.assign(it->second.begin(), it->second.end());
      if (corrupt_.contains(hash)) out[out.size() / 2] ^= std::byte{0x5a};
    }
    if (after_get_) after_get_(hash);
  }

  void DeleteChunk(const std::string& hash) override {
    std::lock_guard lock(mu_);
    chunks_.erase(hash);
  }
  std::vector<std::string> ListChunks() override {
    std::lock_guard lock(mu_);
    std::vector<std::string> names;
    for (const auto& entry : chunks_) names.push_back(entry.first);
    return names;
  }

  void PutManifest(const std::string& image_id, const Manifest& manifest) override {
    std::lock_guard lock(mu_);
    manifests_[image_id] = manifest;
  }
  std::optional<Manifest> GetManifest(const std::string& image_id) override {
    std::lock_guard lock(mu_);
    auto it = manifests_.find(image_id);
    if (it == manifests_.end()) return std::nullopt;
    return it->second;
  }
  void DeleteManifest(const std::string& image_id) override {
    std::lock_guard lock(mu_);
    manifests_.erase(image_id);
  }
  std::vector<std::string> ListManifests() override {
    std::lock_guard lock(mu_);
    std::vector<std::string> ids;
    for (const auto& entry : manifests_) ids.push_back(entry.first);
    return ids;
  }
  void PutImageRecord(const std::string& image_id, const std::string& json) override {
    std::lock_guard lock(mu_);
    records_[image_id] = json;
  }
  std::optional<std::string> GetImageRecord(const std::string& image_id) override {
    std::lock_guard lock(mu_);
    auto it = records_.find(image_id);
    if (it == records_.end()) return std::nullopt;
    return it->second;
  }
  void DeleteImageRecord(const std::string& image_id) override {
    std::lock_guard lock(mu_);
    records_.erase(image_id);
  }

  // --- Setup and fault injection (before the transfer starts).
  void Seed(const std::vector<std::byte>& bytes) {
    std::lock_guard lock(mu_);
    chunks_[Sha256Hex(bytes.data(), bytes.size())] = bytes;
  }
  // Stores `bytes` under `hash` whatever they hash to: a damaged chunk.
  void SeedAs(const std::string& hash, const std::vector<std::byte>& bytes) {
    std::lock_guard lock(mu_);
    chunks_[hash] = bytes;
  }
  // ClaimToWrite says no for `hash` from now on (held), whether or not the store has it (a
  // wrong hint when it does not).
  void Know(const std::string& hash) {
    std::lock_guard lock(mu_);
    known_.insert(hash);
  }
  // Its reads and writes wait on a server (Store::WaitsOnServer): an object store.
  void OnServer() { on_server_ = true; }
  // Puts succeed and store nothing: an object store restarted empty behind our back.
  void LoseWrites() { lose_writes_ = true; }
  void Drop(const std::string& hash) {
    std::lock_guard lock(mu_);
    chunks_.erase(hash);
  }
  // Runs once, right after the first HasChunks call has answered (the plan's).
  void AfterFirstLookup(std::function<void()> hook) { after_first_lookup_ = std::move(hook); }
  // The first `times` calls of `op` on `hash` (or any chunk) throw TransientError.
  void FailTransiently(Op op, const std::string& hash, int times) {
    faults_[{op, hash}].transient_left = times;
  }
  // Every call of `op` on `hash` (or any chunk) throws `error`.
  void FailPermanently(Op op, const std::string& hash, std::exception_ptr error) {
    faults_[{op, hash}].permanent = std::move(error);
  }
  // Reads of `hash` return bytes with one byte flipped.
  void Corrupt(const std::string& hash) { corrupt_.insert(hash); }
  void SetDelays(std::chrono::milliseconds get, std::chrono::milliseconds put) {
    get_delay_ = get;
    put_delay_ = put;
  }
  void AfterGet(Hook hook) { after_get_ = std::move(hook); }
  void AfterPut(Hook hook) { after_put_ = std::move(hook); }

  // --- Counters.
  int GetCalls(const std::string& hash) const { return Count(get_calls_, hash); }
  int PutCalls(const std::string& hash) const { return Count(put_calls_, hash); }
  int TotalGetCalls() const {
    std::lock_guard lock(mu_);
    return total_get_calls_;
  }
  int TotalPutCalls() const {
    std::lock_guard lock(mu_);
    return total_put_calls_;
  }
  int HasChunksCalls() const {
    std::lock_guard lock(mu_);
    return has_chunks_calls_;
  }
  // The hashes of each HasChunks call: the plan's first, the confirmation's last.
  std::vector<std::vector<std::string>> Lookups() const {
    std::lock_guard lock(mu_);
    return lookups_;
  }
  int MostGetsAtOnce() const {
    std::lock_guard lock(mu_);
    return most_gets_at_once_;
  }
  uint64_t BytesWritten() const {
    std::lock_guard lock(mu_);
    return bytes_written_;
  }
  std::optional<std::vector<std::byte>> Chunk(const std::string& hash) const {
    std::lock_guard lock(mu_);
    auto it = chunks_.find(hash);
    if (it == chunks_.end()) return std::nullopt;
    return it->second;
  }

 private:
  struct Fault {
    int transient_left = 0;
    std::exception_ptr permanent;
  };

  int Count(const std::map<std::string, int>& calls, const std::string& hash) const {
    std::lock_guard lock(mu_);
    auto it = calls.find(hash);
    return it == calls.end() ? 0 : it->second;
  }

  // Called with mu_ held.
  void ThrowFault(Op op, const std::string& hash) {
    for (const std::string& key : {hash, std::string(kAnyChunk)}) {
      auto it = faults_.find({op, key});
      if (it == faults_.end()) continue;
      Fault& fault = it->second;
      if (fault.transient_left > 0) {
        if (fault.transient_left != kForever) --fault.transient_left;
        throw TransientError("injected timeout on " + uri_);
      }
      if (fault.permanent) std::rethrow_exception(fault.permanent);
    }
  }

  const std::string uri_;
  mutable std::mutex mu_;
  std::map<std::string, std::vector<std::byte>> chunks_;
  std::map<std::string, Manifest> manifests_;
  std::map<std::string, std::string> records_;
  std::map<std::pair<Op, std::string>, Fault> faults_;
  std::set<std::string> corrupt_;
  std::chrono::milliseconds get_delay_{0};
  std::chrono::milliseconds put_delay_{0};
  Hook after_get_;
  Hook after_put_;
  std::map<std::string, int> get_calls_;
  std::map<std::string, int> put_calls_;
  int total_get_calls_ = 0;
  int total_put_calls_ = 0;
  std::vector<std::vector<std::string>> lookups_;
  bool lose_writes_ = false;
  bool on_server_ = false;
  std::set<std::string> known_;
  int gets_now_ = 0;
  int most_gets_at_once_ = 0;
  std::function<void()> after_first_lookup_;
  int has_chunks_calls_ = 0;
  uint64_t bytes_written_ = 0;
};

// Deterministic non-zero bytes, different for every seed.
std::vector<std::byte> ChunkBytes(int seed, size_t len = kTransferChunk) {
  std::vector<std::byte> bytes(len);
  uint32_t x = 2654435761u * static_cast<uint32_t>(seed + 1);
  for (auto& b : bytes) {
    x = x * 1664525u + 1013904223u;
    b = std::byte(static_cast<uint8_t>((x >> 24) | 1));
  }
  return bytes;
}

using testing_util::HashOf;

// An image of kTransferChunk-sized chunks put into `source`: seeds[i] < 0 is an all-zero chunk,
// else the content seed of chunk i. The last chunk is `last_len` bytes long.
struct TestImage {
  Manifest manifest;
  std::vector<std::string> hashes;            // the manifest's, "" for zero chunks
  std::vector<std::vector<std::byte>> bytes;  // per entry, empty for zero chunks
};

TestImage MakeImage(FakeStore& source, const std::vector<int>& seeds,
                    uint64_t last_len = kTransferChunk) {
  TestImage image;
  uint64_t size = 0;
  for (size_t i = 0; i < seeds.size(); ++i) {
    uint64_t len = i + 1 == seeds.size() ? last_len : kTransferChunk;
    size += len;
    if (seeds[i] < 0) {
      image.hashes.emplace_back();
      image.bytes.emplace_back();
      continue;
    }
    std::vector<std::byte> bytes = ChunkBytes(seeds[i], len);
    source.Seed(bytes);
    image.hashes.push_back(HashOf(bytes));
    image.bytes.push_back(std::move(bytes));
  }
  image.manifest = Manifest::InMemory(size, kTransferChunk, image.hashes, "sha256:unused");
  return image;
}

std::vector<int> Range(int n) {
  std::vector<int> seeds(n);
  for (int i = 0; i < n; ++i) seeds[i] = i;
  return seeds;
}

TransferOptions FastOptions() {
  TransferOptions options;
  options.threads = 4;
  options.retry.backoff_initial_ms = 1;
  options.retry.backoff_max_ms = 2;
  return options;
}

std::vector<TransferDestination> Destinations(std::vector<FakeStore*> stores,
                                              std::vector<CancelToken>* tokens = nullptr) {
  std::vector<TransferDestination> dests;
  for (size_t i = 0; i < stores.size(); ++i) {
    TransferDestination dest;
    dest.store = stores[i];
    if (tokens != nullptr) dest.cancel = &(*tokens)[i];
    dests.push_back(std::move(dest));
  }
  return dests;
}

// Every chunk of the image is in `store`, byte for byte.
void ExpectHoldsImage(const FakeStore& store, const TestImage& image) {
  for (size_t i = 0; i < image.hashes.size(); ++i) {
    const std::string& hash = image.hashes[i];
    if (hash.empty()) continue;
    std::optional<std::vector<std::byte>> held = store.Chunk(hash);
    ASSERT_TRUE(held.has_value()) << "chunk " << i << " missing from " << store.uri();
    EXPECT_EQ(*held, image.bytes[i]);
  }
}

// Copies `image` from `source` to `dest` alone, expects the copy to complete with `dest`
// holding the image, and returns its progress.
IoProgress CopyCompletes(FakeStore& source, const TestImage& image, FakeStore& dest) {
  auto dests = Destinations({&dest});
  auto outcomes = CopyImage(source, image.manifest, dests, FastOptions());
  EXPECT_EQ(outcomes[0].kind, Kind::kCompleted) << outcomes[0].error;
  ExpectHoldsImage(dest, image);
  const IoProgress& p = outcomes[0].progress;
  EXPECT_EQ(p.bytes_done, p.bytes_total);  // counted once, not twice
  return p;
}

TEST(TransferTest, DestinationGetsOnlyTheChunksItLacks) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(16), kTransferChunk / 2);
  FakeStore dest("fake://dest");
  for (int i = 0; i < 16; i += 2) dest.Seed(image.bytes[i]);

  auto dests = Destinations({&dest});
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, FastOptions());

  ASSERT_EQ(outcomes.size(), 1u);
  EXPECT_EQ(outcomes[0].kind, Kind::kCompleted) << outcomes[0].error;
  ExpectHoldsImage(dest, image);
  EXPECT_EQ(dest.TotalPutCalls(), 8);
  EXPECT_EQ(source.TotalGetCalls(), 8);
  // One bulk check to plan, one to confirm before the commit: not one per chunk.
  EXPECT_EQ(dest.HasChunksCalls(), 2);
  for (int i = 0; i < 16; i += 2) {
    EXPECT_EQ(source.GetCalls(image.hashes[i]), 0);
    EXPECT_EQ(dest.PutCalls(image.hashes[i]), 0);
  }
  const IoProgress& p = outcomes[0].progress;
  EXPECT_EQ(p.bytes_total, 15 * kTransferChunk + kTransferChunk / 2);
  EXPECT_EQ(p.bytes_done, p.bytes_total);
  EXPECT_EQ(p.bytes_transferred,
            7 * kTransferChunk + kTransferChunk / 2);  // the short last chunk moved
  EXPECT_EQ(dest.BytesWritten(), p.bytes_transferred);
  EXPECT_EQ(p.chunks_total, 16u);
  EXPECT_EQ(p.chunks_skipped, 8u);
}

// A copy between local stores decodes and hashes: one worker per CPU and one more, however
// many the options allow; one that waits on a server keeps them all busy.
TEST(TransferTest, OnlyACopyThatWaitsOnAServerRunsMoreWorkersThanCpus) {
  const int threads = 8;
  const int cpu_workers = static_cast<int>(std::thread::hardware_concurrency()) + 1;
  for (bool on_server : {false, true}) {
    SCOPED_TRACE(on_server ? "on a server" : "local");
    FakeStore source("fake://source");
    TestImage image = MakeImage(source, Range(24));
    source.SetDelays(std::chrono::milliseconds(30), std::chrono::milliseconds(0));
    FakeStore dest("fake://dest");
    if (on_server) dest.OnServer();
    auto dests = Destinations({&dest});
    TransferOptions options = FastOptions();
    options.threads = threads;
    std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, options);
    ASSERT_EQ(outcomes[0].kind, Kind::kCompleted) << outcomes[0].error;
    ExpectHoldsImage(dest, image);
    if (!on_server) {
      EXPECT_LE(source.MostGetsAtOnce(), std::min(threads, cpu_workers));
    } else if (cpu_workers < threads) {
      EXPECT_GT(source.MostGetsAtOnce(), cpu_workers);  // 8 reads of 30 ms at once, near enough
    }
  }
}

TEST(TransferTest, ZeroChunksAreNeverReadNorWritten) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, {-1, 0, -1, -1, 1, -1});
  FakeStore dest("fake://dest");

  auto dests = Destinations({&dest});
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, FastOptions());

  EXPECT_EQ(outcomes[0].kind, Kind::kCompleted) << outcomes[0].error;
  EXPECT_EQ(source.TotalGetCalls(), 2);
  EXPECT_EQ(dest.TotalPutCalls(), 2);
  EXPECT_EQ(dest.PutCalls(""), 0);
  EXPECT_EQ(dest.ListChunks().size(), 2u);
  const IoProgress& p = outcomes[0].progress;
  EXPECT_EQ(p.bytes_done, 6 * kTransferChunk);
  EXPECT_EQ(p.bytes_transferred, 2 * kTransferChunk);
  EXPECT_EQ(p.chunks_skipped, 4u);
}

TEST(TransferTest, AllZeroImageMovesNothing) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, {-1, -1, -1});
  FakeStore dest("fake://dest");

  auto dests = Destinations({&dest});
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, FastOptions());

  EXPECT_EQ(outcomes[0].kind, Kind::kCompleted);
  EXPECT_EQ(source.TotalGetCalls(), 0);
  EXPECT_EQ(dest.TotalPutCalls(), 0);
  EXPECT_EQ(outcomes[0].progress.bytes_done, 3 * kTransferChunk);
  EXPECT_EQ(outcomes[0].progress.chunks_skipped, 3u);
}

TEST(TransferTest, DuplicateChunksMoveOnce) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, {7, 7, 3, 7, 3, 7});
  FakeStore dest("fake://dest");

  auto dests = Destinations({&dest});
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, FastOptions());

  EXPECT_EQ(outcomes[0].kind, Kind::kCompleted) << outcomes[0].error;
  EXPECT_EQ(source.GetCalls(image.hashes[0]), 1);
  EXPECT_EQ(source.GetCalls(image.hashes[2]), 1);
  EXPECT_EQ(dest.TotalPutCalls(), 2);
  const IoProgress& p = outcomes[0].progress;
  EXPECT_EQ(p.bytes_done, 6 * kTransferChunk);  // every entry is covered by the two writes
  EXPECT_EQ(p.bytes_transferred, 2 * kTransferChunk);
  EXPECT_EQ(p.chunks_skipped, 0u);
}

TEST(TransferTest, FanOutReadsEachSourceChunkOnce) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(30));
  FakeStore a("fake://a");
  FakeStore b("fake://b");
  FakeStore c("fake://c");
  for (int i = 0; i < 30; i += 3) b.Seed(image.bytes[i]);  // b lacks 20
  for (int i = 0; i < 30; ++i) {
    if (i < 25) c.Seed(image.bytes[i]);  // c lacks the last 5
  }

  auto dests = Destinations({&a, &b, &c});
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, FastOptions());

  for (size_t d = 0; d < 3; ++d) {
    EXPECT_EQ(outcomes[d].kind, Kind::kCompleted) << outcomes[d].error;
    EXPECT_EQ(outcomes[d].progress.bytes_done, 30 * kTransferChunk);
  }
  for (const std::string& hash : image.hashes) EXPECT_EQ(source.GetCalls(hash), 1);
  EXPECT_EQ(a.TotalPutCalls(), 30);
  EXPECT_EQ(b.TotalPutCalls(), 20);
  EXPECT_EQ(c.TotalPutCalls(), 5);
  ExpectHoldsImage(a, image);
  ExpectHoldsImage(b, image);
  ExpectHoldsImage(c, image);
  EXPECT_EQ(outcomes[2].progress.bytes_transferred, 5 * kTransferChunk);
  EXPECT_EQ(outcomes[2].progress.chunks_skipped, 25u);
}

TEST(TransferTest, ChunksNoDestinationNeedsAreNotRead) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(10));
  FakeStore a("fake://a");
  FakeStore b("fake://b");
  for (int i = 0; i < 10; ++i) {
    a.Seed(image.bytes[i]);
    if (i != 4) b.Seed(image.bytes[i]);
  }

  auto dests = Destinations({&a, &b});
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, FastOptions());

  EXPECT_EQ(outcomes[0].kind, Kind::kCompleted);
  EXPECT_EQ(outcomes[1].kind, Kind::kCompleted);
  EXPECT_EQ(source.TotalGetCalls(), 1);
  EXPECT_EQ(source.GetCalls(image.hashes[4]), 1);
  EXPECT_EQ(a.TotalPutCalls(), 0);
  EXPECT_EQ(b.TotalPutCalls(), 1);
}

TEST(TransferTest, TransientErrorsAreRetriedUntilTheySucceed) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(8));
  const std::string& flaky_read = image.hashes[2];
  const std::string& flaky_write = image.hashes[5];
  source.FailTransiently(FakeStore::Op::kGet, flaky_read, 2);
  FakeStore dest("fake://dest");
  dest.FailTransiently(FakeStore::Op::kPut, flaky_write, 4);
  dest.FailTransiently(FakeStore::Op::kHas, FakeStore::kAnyChunk, 1);

  auto dests = Destinations({&dest});
  TransferOptions options = FastOptions();
  options.retry.max_attempts = 5;
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, options);

  EXPECT_EQ(outcomes[0].kind, Kind::kCompleted) << outcomes[0].error;
  EXPECT_EQ(source.GetCalls(flaky_read), 3);
  EXPECT_EQ(dest.PutCalls(flaky_write), 5);
  EXPECT_EQ(dest.HasChunksCalls(), 3);  // the plan's failed and retried lookups, the confirmation
  ExpectHoldsImage(dest, image);
  EXPECT_EQ(outcomes[0].progress.bytes_transferred, 8 * kTransferChunk);
}

TEST(TransferTest, TransientWriteErrorsThatNeverStopFailTheDestination) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(6));
  const std::string& bad = image.hashes[3];
  FakeStore dest("fake://dest");
  dest.FailTransiently(FakeStore::Op::kPut, bad, FakeStore::kForever);
  FakeStore other("fake://other");

  auto dests = Destinations({&dest, &other});
  TransferOptions options = FastOptions();
  options.retry.max_attempts = 3;
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, options);

  EXPECT_EQ(outcomes[0].kind, Kind::kFailed);
  EXPECT_EQ(outcomes[0].error_code, codes::kTransferFailed);
  EXPECT_NE(outcomes[0].error.find(bad), std::string::npos) << outcomes[0].error;
  EXPECT_NE(outcomes[0].error.find("fake://dest"), std::string::npos) << outcomes[0].error;
  EXPECT_NE(outcomes[0].error.find("3 attempts"), std::string::npos) << outcomes[0].error;
  EXPECT_NE(outcomes[0].error.find("injected timeout"), std::string::npos) << outcomes[0].error;
  EXPECT_EQ(dest.PutCalls(bad), 3);
  EXPECT_FALSE(dest.Chunk(bad).has_value());
  EXPECT_LT(outcomes[0].progress.bytes_done, outcomes[0].progress.bytes_total);
  EXPECT_EQ(outcomes[1].kind, Kind::kCompleted) << outcomes[1].error;
  ExpectHoldsImage(other, image);
}

TEST(TransferTest, TransientReadErrorsThatNeverStopFailEveryDestinationNeedingTheChunk) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(6));
  const std::string& bad = image.hashes[1];
  source.FailTransiently(FakeStore::Op::kGet, bad, FakeStore::kForever);
  FakeStore a("fake://a");
  FakeStore b("fake://b");
  FakeStore has_it("fake://has-it");
  has_it.Seed(image.bytes[1]);

  auto dests = Destinations({&a, &b, &has_it});
  TransferOptions options = FastOptions();
  options.retry.max_attempts = 2;
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, options);

  for (size_t d = 0; d < 2; ++d) {
    EXPECT_EQ(outcomes[d].kind, Kind::kFailed);
    EXPECT_EQ(outcomes[d].error_code, codes::kTransferFailed);
    EXPECT_NE(outcomes[d].error.find("fake://source"), std::string::npos) << outcomes[d].error;
    EXPECT_NE(outcomes[d].error.find("2 attempts"), std::string::npos) << outcomes[d].error;
  }
  EXPECT_EQ(source.GetCalls(bad), 2);  // one read for all destinations, retried once
  EXPECT_EQ(outcomes[2].kind, Kind::kCompleted) << outcomes[2].error;
  ExpectHoldsImage(has_it, image);
}

TEST(TransferTest, PermanentErrorFailsOnlyThatDestinationWithoutRetrying) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(10));
  FakeStore a("fake://a");
  FakeStore b("fake://b");
  FakeStore c("fake://c");
  b.FailPermanently(FakeStore::Op::kPut, FakeStore::kAnyChunk,
                    std::make_exception_ptr(TransferError(codes::kTransferFailed, "disk full")));

  auto dests = Destinations({&a, &b, &c});
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, FastOptions());

  EXPECT_EQ(outcomes[0].kind, Kind::kCompleted) << outcomes[0].error;
  EXPECT_EQ(outcomes[2].kind, Kind::kCompleted) << outcomes[2].error;
  ExpectHoldsImage(a, image);
  ExpectHoldsImage(c, image);
  EXPECT_EQ(outcomes[1].kind, Kind::kFailed);
  EXPECT_EQ(outcomes[1].error_code, codes::kTransferFailed);
  EXPECT_NE(outcomes[1].error.find("disk full"), std::string::npos) << outcomes[1].error;
  // Not retried, and no write after the failure was seen: at most one per worker.
  EXPECT_LE(b.TotalPutCalls(), FastOptions().threads);
  EXPECT_EQ(b.BytesWritten(), 0u);
  for (const std::string& hash : image.hashes) EXPECT_EQ(source.GetCalls(hash), 1);
}

TEST(TransferTest, PermanentErrorKeepsTheStoresCodeOrFallsBackToTransferFailed) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(3));
  FakeStore unavailable("fake://unavailable");
  unavailable.FailPermanently(
      FakeStore::Op::kHas, FakeStore::kAnyChunk,
      std::make_exception_ptr(TransferError(codes::kStoreUnavailable, "bucket is gone")));
  FakeStore plain("fake://plain");
  plain.FailPermanently(FakeStore::Op::kPut, FakeStore::kAnyChunk,
                        std::make_exception_ptr(std::runtime_error("boom")));
  FakeStore fine("fake://fine");

  auto dests = Destinations({&unavailable, &plain, &fine});
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, FastOptions());

  EXPECT_EQ(outcomes[0].kind, Kind::kFailed);
  EXPECT_EQ(outcomes[0].error_code, codes::kStoreUnavailable);
  EXPECT_NE(outcomes[0].error.find("bucket is gone"), std::string::npos);
  EXPECT_EQ(unavailable.TotalPutCalls(), 0);
  EXPECT_EQ(outcomes[1].kind, Kind::kFailed);
  EXPECT_EQ(outcomes[1].error_code, codes::kTransferFailed);
  EXPECT_NE(outcomes[1].error.find("boom"), std::string::npos);
  EXPECT_EQ(outcomes[2].kind, Kind::kCompleted) << outcomes[2].error;
}

TEST(TransferTest, PermanentSourceErrorFailsEveryDestinationNeedingTheChunk) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(4));
  source.FailPermanently(
      FakeStore::Op::kGet, image.hashes[2],
      std::make_exception_ptr(TransferError(codes::kTransferFailed, "object vanished")));
  FakeStore a("fake://a");
  FakeStore b("fake://b");

  auto dests = Destinations({&a, &b});
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, FastOptions());

  for (const TransferOutcome& outcome : outcomes) {
    EXPECT_EQ(outcome.kind, Kind::kFailed);
    EXPECT_EQ(outcome.error_code, codes::kTransferFailed);
    EXPECT_NE(outcome.error.find("object vanished"), std::string::npos) << outcome.error;
  }
  EXPECT_EQ(source.GetCalls(image.hashes[2]), 1);
}

TEST(TransferTest, CorruptSourceChunkFailsWithIntegrityErrorAndIsNeverWritten) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(12));
  const std::string& bad = image.hashes[7];
  source.Corrupt(bad);
  FakeStore a("fake://a");
  FakeStore b("fake://b");
  FakeStore has_it("fake://has-it");
  has_it.Seed(image.bytes[7]);

  auto dests = Destinations({&a, &b, &has_it});
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, FastOptions());

  for (size_t d = 0; d < 2; ++d) {
    EXPECT_EQ(outcomes[d].kind, Kind::kFailed);
    EXPECT_EQ(outcomes[d].error_code, codes::kIntegrityError);
    EXPECT_NE(outcomes[d].error.find(bad), std::string::npos) << outcomes[d].error;
    EXPECT_NE(outcomes[d].error.find("fake://source"), std::string::npos) << outcomes[d].error;
  }
  for (FakeStore* store : {&a, &b, &has_it}) {
    EXPECT_EQ(store->PutCalls(bad), 0) << store->uri();
    std::optional<std::vector<std::byte>> held = store->Chunk(bad);
    if (held) EXPECT_EQ(HashOf(*held), bad) << store->uri();
  }
  EXPECT_EQ(source.GetCalls(bad), 1);  // a corrupt chunk is not retried
  EXPECT_EQ(outcomes[2].kind, Kind::kCompleted) << outcomes[2].error;
  ExpectHoldsImage(has_it, image);
}

TEST(TransferTest, CancellingOneDestinationStopsItWhileAnotherCompletes) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(60));
  source.SetDelays(std::chrono::milliseconds(1), std::chrono::milliseconds(0));
  FakeStore cancelled("fake://cancelled");
  FakeStore kept("fake://kept");
  cancelled.SetDelays(std::chrono::milliseconds(0), std::chrono::milliseconds(2));
  kept.SetDelays(std::chrono::milliseconds(0), std::chrono::milliseconds(2));
  std::vector<CancelToken> tokens(2);
  // The cancel lands inside the fifth write to the first destination.
  std::atomic<int> puts{0};
  cancelled.AfterPut([&](const std::string&) {
    if (++puts == 5) tokens[0].Cancel();
  });

  auto dests = Destinations({&cancelled, &kept}, &tokens);
  TransferOptions options = FastOptions();
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, options);

  EXPECT_EQ(outcomes[0].kind, Kind::kCancelled);
  EXPECT_TRUE(outcomes[0].error_code.empty());
  // Writes already under way finish; no new one starts.
  EXPECT_LE(cancelled.TotalPutCalls(), 5 + options.threads);
  EXPECT_LT(outcomes[0].progress.bytes_done, outcomes[0].progress.bytes_total);
  EXPECT_EQ(outcomes[0].progress.bytes_transferred, cancelled.BytesWritten());
  EXPECT_EQ(outcomes[1].kind, Kind::kCompleted) << outcomes[1].error;
  ExpectHoldsImage(kept, image);
  for (const std::string& hash : image.hashes) EXPECT_EQ(source.GetCalls(hash), 1);
}

TEST(TransferTest, CancellingEveryDestinationStopsReadingTheSource) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(100));
  source.SetDelays(std::chrono::milliseconds(1), std::chrono::milliseconds(0));
  FakeStore a("fake://a");
  FakeStore b("fake://b");
  std::vector<CancelToken> tokens(2);
  std::atomic<int> reads{0};
  source.AfterGet([&](const std::string&) {
    if (++reads == 3) {
      tokens[0].Cancel();
      tokens[1].Cancel();
    }
  });

  auto dests = Destinations({&a, &b}, &tokens);
  TransferOptions options = FastOptions();
  options.buffer_memory = 8 * kTransferChunk;
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, options);

  EXPECT_EQ(outcomes[0].kind, Kind::kCancelled);
  EXPECT_EQ(outcomes[1].kind, Kind::kCancelled);
  // Only reads already under way (at most one per buffer) run after the cancel.
  EXPECT_LE(source.TotalGetCalls(), 3 + 8);
}

TEST(TransferTest, CancelWakesARetryBackoff) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(2));
  FakeStore dest("fake://dest");
  dest.FailTransiently(FakeStore::Op::kPut, FakeStore::kAnyChunk, FakeStore::kForever);
  std::vector<CancelToken> tokens(1);
  // A canceller thread stands in for the user; the backoff below would last minutes.
  std::thread canceller;
  std::atomic<bool> started{false};
  source.AfterGet([&](const std::string&) {
    if (!started.exchange(true)) {
      canceller = std::thread([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        tokens[0].Cancel();
      });
    }
  });

  auto dests = Destinations({&dest}, &tokens);
  TransferOptions options = FastOptions();
  options.retry.max_attempts = 10;
  options.retry.backoff_initial_ms = 120'000;
  options.retry.backoff_max_ms = 120'000;
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, options);
  canceller.join();

  EXPECT_EQ(outcomes[0].kind, Kind::kCancelled);
  EXPECT_LE(dest.TotalPutCalls(), 2 * 2);  // nowhere near 10 attempts per chunk
}

TEST(TransferTest, DestinationCancelledBeforeTheStartReceivesNothing) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(5));
  FakeStore a("fake://a");
  FakeStore b("fake://b");
  std::vector<CancelToken> tokens(2);
  tokens[0].Cancel();

  auto dests = Destinations({&a, &b}, &tokens);
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, FastOptions());

  EXPECT_EQ(outcomes[0].kind, Kind::kCancelled);
  EXPECT_EQ(a.TotalPutCalls(), 0);
  EXPECT_EQ(outcomes[1].kind, Kind::kCompleted);
  ExpectHoldsImage(b, image);
}

TEST(TransferTest, ProgressRunsOnTheCallingThreadIsMonotonicAndReachesTheTotal) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, {0, 1, -1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, 100);
  source.SetDelays(std::chrono::milliseconds(0), std::chrono::milliseconds(0));
  FakeStore a("fake://a");
  FakeStore b("fake://b");
  a.SetDelays(std::chrono::milliseconds(0), std::chrono::milliseconds(15));
  b.Seed(image.bytes[0]);

  std::vector<std::vector<IoProgress>> seen(2);
  std::set<std::thread::id> threads;
  auto dests = Destinations({&a, &b});
  for (size_t d = 0; d < 2; ++d) {
    dests[d].progress = [&, d](const IoProgress& p) {
      threads.insert(std::this_thread::get_id());
      seen[d].push_back(p);
    };
  }
  TransferOptions options = FastOptions();
  options.threads = 2;
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, options);

  EXPECT_EQ(threads, std::set<std::thread::id>{std::this_thread::get_id()});
  for (size_t d = 0; d < 2; ++d) {
    EXPECT_EQ(outcomes[d].kind, Kind::kCompleted) << outcomes[d].error;
    ASSERT_FALSE(seen[d].empty());
    for (size_t i = 1; i < seen[d].size(); ++i) {
      EXPECT_GE(seen[d][i].bytes_done, seen[d][i - 1].bytes_done);
      EXPECT_GE(seen[d][i].bytes_transferred, seen[d][i - 1].bytes_transferred);
    }
    const IoProgress& last = seen[d].back();
    EXPECT_EQ(last.bytes_total, image.manifest.size);
    EXPECT_EQ(last.bytes_done, last.bytes_total);
    EXPECT_EQ(last.chunks_total, 13u);
    EXPECT_EQ(last.bytes_done, outcomes[d].progress.bytes_done);
    EXPECT_EQ(last.bytes_transferred, outcomes[d].progress.bytes_transferred);
  }
  EXPECT_EQ(seen[0].back().bytes_transferred, 11 * kTransferChunk + 100);
  EXPECT_EQ(seen[1].back().bytes_transferred, 10 * kTransferChunk + 100);
  EXPECT_EQ(seen[1].back().chunks_skipped, 2u);
}

TEST(TransferTest, ChunkBuffersStayWithinThePoolWhateverTheImageSize) {
  // Counts chunks read from the source and not yet written (one destination, so each read
  // is written once): that is how many chunk buffers are alive.
  std::mutex mu;
  int alive = 0;
  int max_alive = 0;
  std::set<const void*> buffers;  // distinct vectors the source was asked to fill

  class CountingSource : public FakeStore {
   public:
    CountingSource(std::mutex& mu, int& alive, int& max_alive, std::set<const void*>& buffers)
        : FakeStore("fake://source"),
          mu_(mu),
          alive_(alive),
          max_alive_(max_alive),
          buffers_(buffers) {}
    void GetChunk(const std::string& hash, std::vector<std::byte>& out,
                  const CancelToken* cancel = nullptr) override {
      FakeStore::GetChunk(hash, out, cancel);
      std::lock_guard lock(mu_);
      buffers_.insert(&out);
      max_alive_ = std::max(max_alive_, ++alive_);
    }

   private:
    std::mutex& mu_;
    int& alive_;
    int& max_alive_;
    std::set<const void*>& buffers_;
  };

  CountingSource source(mu, alive, max_alive, buffers);
  TestImage image = MakeImage(source, Range(200));
  FakeStore dest("fake://dest");
  dest.SetDelays(std::chrono::milliseconds(0), std::chrono::milliseconds(1));
  dest.AfterPut([&](const std::string&) {
    std::lock_guard lock(mu);
    --alive;
  });

  auto dests = Destinations({&dest});
  TransferOptions options = FastOptions();
  options.threads = 4;
  options.buffer_memory = 6 * kTransferChunk;  // pool = max(2, min(6, 2 * 4)) = 6
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, options);

  EXPECT_EQ(outcomes[0].kind, Kind::kCompleted) << outcomes[0].error;
  EXPECT_EQ(dest.TotalPutCalls(), 200);
  EXPECT_GE(max_alive, 1);
  EXPECT_LE(max_alive, 6);
  EXPECT_LE(buffers.size(), 6u);  // buffers are reused, not one per chunk
  EXPECT_EQ(alive, 0);
}

TEST(TransferTest, PoolHasAtLeastTwoBuffersEvenWhenTheMemoryCapIsBelowOneChunk) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(20));
  FakeStore dest("fake://dest");

  auto dests = Destinations({&dest});
  TransferOptions options = FastOptions();
  options.buffer_memory = kTransferChunk / 2;
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, options);

  EXPECT_EQ(outcomes[0].kind, Kind::kCompleted) << outcomes[0].error;
  ExpectHoldsImage(dest, image);
}

TEST(TransferTest, BandwidthCapStillDeliversEverything) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(4));
  FakeStore dest("fake://dest");

  auto dests = Destinations({&dest});
  TransferOptions options = FastOptions();
  options.bandwidth = 1ULL << 30;  // generous: correctness only, timing is for benchmarks
  std::vector<TransferOutcome> outcomes = CopyImage(source, image.manifest, dests, options);

  EXPECT_EQ(outcomes[0].kind, Kind::kCompleted) << outcomes[0].error;
  ExpectHoldsImage(dest, image);
}

TEST(TransferTest, EmptyImageAndNoDestinations) {
  FakeStore source("fake://source");
  Manifest empty;
  empty.chunk_size = kTransferChunk;
  FakeStore dest("fake://dest");
  auto dests = Destinations({&dest});
  std::vector<TransferOutcome> outcomes = CopyImage(source, empty, dests, FastOptions());
  ASSERT_EQ(outcomes.size(), 1u);
  EXPECT_EQ(outcomes[0].kind, Kind::kCompleted);
  EXPECT_EQ(outcomes[0].progress.bytes_total, 0u);

  TestImage image = MakeImage(source, Range(3));
  std::vector<TransferDestination> none;
  EXPECT_TRUE(CopyImage(source, image.manifest, none, FastOptions()).empty());
  EXPECT_EQ(source.TotalGetCalls(), 0);
}

// Nothing is committed on the strength of the plan: a chunk the destination held when the
// plan asked but lost before the commit (deleted, or truncated, behind the copy's back) is
// found by the confirmation and written anew.
TEST(TransferTest, ChunksPresentAtThePlanButLostBeforeTheCommitAreWrittenAnew) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(8), kTransferChunk);
  FakeStore dest("fake://dest");
  for (int i = 0; i < 8; ++i) dest.Seed(image.bytes[i]);
  dest.AfterFirstLookup([&] {
    dest.Drop(image.hashes[3]);
    dest.SeedAs(image.hashes[5],
                std::vector<std::byte>(image.bytes[5].begin(), image.bytes[5].begin() + 100));
  });
  const IoProgress p = CopyCompletes(source, image, dest);
  EXPECT_EQ(dest.PutCalls(image.hashes[3]), 1);
  EXPECT_EQ(dest.PutCalls(image.hashes[5]), 1);
  EXPECT_EQ(dest.TotalPutCalls(), 2);
  EXPECT_EQ(p.bytes_transferred, 2 * kTransferChunk);
  EXPECT_EQ(p.chunks_skipped, 6u);
}

// A destination given without a store fails alone, with a clear error; the others complete.
TEST(TransferTest, ADestinationWithoutAStoreFailsAloneWithAClearError) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(4), kTransferChunk);
  FakeStore dest("fake://dest");
  std::vector<TransferDestination> dests = Destinations({&dest});
  dests.emplace_back();  // no store
  auto outcomes = CopyImage(source, image.manifest, dests, FastOptions());
  ASSERT_EQ(outcomes.size(), 2u);
  EXPECT_EQ(outcomes[0].kind, Kind::kCompleted) << outcomes[0].error;
  ExpectHoldsImage(dest, image);
  EXPECT_EQ(outcomes[1].kind, Kind::kFailed);
  EXPECT_EQ(outcomes[1].error_code, codes::kTransferFailed);
  EXPECT_NE(outcomes[1].error.find("no store"), std::string::npos) << outcomes[1].error;
}

// Chunks another copy wrote into the destination after this copy's plan (two versions of an
// image replicated at once) are neither read nor written again; they count as skipped.
TEST(TransferTest, ChunksWrittenByAnotherCopySinceThePlanAreNotSentAgain) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(8), kTransferChunk);
  FakeStore dest("fake://dest");
  dest.AfterFirstLookup([&] {
    for (int i : {1, 4, 6}) {
      dest.Seed(image.bytes[i]);
      dest.Know(image.hashes[i]);
    }
  });
  const IoProgress p = CopyCompletes(source, image, dest);
  for (int i : {1, 4, 6}) {
    EXPECT_EQ(source.GetCalls(image.hashes[i]), 0) << i;
    EXPECT_EQ(dest.PutCalls(image.hashes[i]), 0) << i;
  }
  EXPECT_EQ(dest.TotalPutCalls(), 5);
  EXPECT_EQ(p.bytes_transferred, 5 * kTransferChunk);
  EXPECT_EQ(p.chunks_skipped, 3u);
}

// A hint that is wrong (the store says it holds chunks it does not) costs a second pass, not
// the copy: the confirmation finds them missing and they are written, hint or no hint.
TEST(TransferTest, AWrongHintThatAChunkIsHeldIsCaughtByTheConfirmation) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(8), kTransferChunk);
  FakeStore dest("fake://dest");
  for (int i : {2, 3}) dest.Know(image.hashes[i]);
  const IoProgress p = CopyCompletes(source, image, dest);
  EXPECT_EQ(dest.PutCalls(image.hashes[2]), 1);
  EXPECT_EQ(dest.TotalPutCalls(), 8);
  EXPECT_EQ(p.bytes_transferred, 8 * kTransferChunk);
  EXPECT_EQ(p.chunks_skipped, 0u);
}

// A store that acknowledges writes and keeps nothing (an S3 server restarted empty with the
// bucket made again) fails the copy instead of letting it be committed.
TEST(TransferTest, AStoreThatLosesWhatItIsGivenFailsTheCopy) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(4), kTransferChunk);
  FakeStore dest("fake://dest");
  dest.LoseWrites();
  auto dests = Destinations({&dest});
  auto outcomes = CopyImage(source, image.manifest, dests, FastOptions());
  ASSERT_EQ(outcomes[0].kind, Kind::kFailed);
  EXPECT_EQ(outcomes[0].error_code, codes::kTransferFailed);
  EXPECT_NE(outcomes[0].error.find("still missing from fake://dest"), std::string::npos)
      << outcomes[0].error;
  EXPECT_EQ(dest.TotalPutCalls(), 8);  // written, confirmed missing, written again
}

TEST(TransferTest, ProgressCallbackThatThrowsStopsTheTransferAndPropagates) {
  FakeStore source("fake://source");
  TestImage image = MakeImage(source, Range(30));
  FakeStore dest("fake://dest");
  dest.SetDelays(std::chrono::milliseconds(0), std::chrono::milliseconds(10));
  auto dests = Destinations({&dest});
  dests[0].progress = [](const IoProgress&) { throw std::runtime_error("callback failed"); };

  EXPECT_THROW(CopyImage(source, image.manifest, dests, FastOptions()), std::runtime_error);
}

// --- TokenBucket, on a clock the test moves by hand.

class TokenBucketTest : public ::testing::Test {
 protected:
  using Clock = TokenBucket::Clock;
  TokenBucket::NowFn FakeNow() {
    return [this] { return now_; };
  }
  void Advance(std::chrono::milliseconds ms) { now_ += ms; }

  Clock::time_point now_{};
};

TEST_F(TokenBucketTest, UnlimitedNeverWaits) {
  TokenBucket bucket(0, 0, FakeNow());
  EXPECT_TRUE(bucket.unlimited());
  EXPECT_EQ(bucket.Reserve(1ULL << 40), Clock::duration::zero());
}

TEST_F(TokenBucketTest, StartsFullThenChargesTheRate) {
  TokenBucket bucket(1000, 0, FakeNow());  // 1000 B/s, burst one second
  EXPECT_EQ(bucket.Reserve(600), Clock::duration::zero());
  EXPECT_EQ(bucket.Reserve(400), Clock::duration::zero());
  EXPECT_EQ(bucket.Reserve(500), std::chrono::milliseconds(500));
  // The reservation above is owed: the next caller waits behind it.
  EXPECT_EQ(bucket.Reserve(500), std::chrono::milliseconds(1000));
  EXPECT_DOUBLE_EQ(bucket.tokens(), -1000.0);
}

TEST_F(TokenBucketTest, RefillsWithTimeUpToTheBurst) {
  TokenBucket bucket(1000, 2000, FakeNow());
  EXPECT_EQ(bucket.Reserve(2000), Clock::duration::zero());
  Advance(std::chrono::milliseconds(250));
  EXPECT_DOUBLE_EQ(bucket.tokens(), 250.0);
  Advance(std::chrono::seconds(60));
  EXPECT_DOUBLE_EQ(bucket.tokens(), 2000.0);  // a quiet minute does not bank a minute
}

TEST_F(TokenBucketTest, AChunkLargerThanTheBurstPassesAtTheRate) {
  TokenBucket bucket(1000, 0, FakeNow());
  // 4 s worth at once: the caller waits 3 s (one second was in the bucket).
  EXPECT_EQ(bucket.Reserve(4000), std::chrono::seconds(3));
  Advance(std::chrono::seconds(3));
  EXPECT_DOUBLE_EQ(bucket.tokens(), 0.0);
  Advance(std::chrono::seconds(1));
  EXPECT_EQ(bucket.Reserve(1000), Clock::duration::zero());
  EXPECT_EQ(bucket.Reserve(1), std::chrono::milliseconds(1));
}

}  // namespace
}  // namespace imagerelay
