// The digester: computes the whole-image digest of images that became Available without
// one. An import leaves the digest for later when the file is mostly holes (hashing their
// zeros would make the import as slow as the virtual size; see ImportOptions), and a copy
// of such an image inherits the gap. The digest is computed from the stored chunks, each
// checked against its name, then written to the manifest, the image record and the
// catalog, and handed on to the image's Available copies. One loop at a time runs, on a
// background thread the engine owns (and joins); Engine::WaitDigest and WaitIdle read how
// far it got through Progress, Failure and Running.
#pragma once

#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "engine/events.hpp"
#include "imagerelay/cancel.hpp"
#include "imagerelay/catalog.hpp"
#include "imagerelay/image_io.hpp"
#include "imagerelay/manifest.hpp"
#include "imagerelay/store.hpp"

namespace imagerelay {

// Why the digest of an image could not be computed.
struct DigestFailure {
  std::string code;
  std::string message;
};

class Digester {
 public:
  // What the digester works with, given by the engine.
  struct Parts {
    Catalog& catalog;
    // The store of a region (throws if the region is gone).
    std::function<std::shared_ptr<Store>(const std::string& region_id)> store_for;
    // The image's manifest, checked against what its commit recorded (throws if not).
    std::function<Manifest(const Image& image, Store& store)> load_manifest;
    // Told of an error met reading `region`'s store (a damaged chunk is reported).
    std::function<void(const std::exception& error, const std::string& region, Store& store)>
        note_damage;
    // Runs a change in a write transaction and publishes its events after the commit.
    std::function<void(const std::function<void(CatalogTx&, PendingEvents&)>&)> write;
    // Wakes this process's waiters.
    std::function<void()> notify_changed;
    // Runs `fn` on a background thread the engine joins when it closes.
    std::function<void(std::function<void()> fn)> spawn;
    uint64_t buffer_memory = 256ULL << 20;  // Limits.buffer_memory: the digest's read-ahead
  };
  explicit Digester(Parts parts) : parts_(std::move(parts)) {}
  Digester(const Digester&) = delete;
  Digester& operator=(const Digester&) = delete;

  // Starts the loop unless it runs (then it looks again before it stops); it handles every
  // Available image without a digest, each once per process.
  void Schedule();
  // Sets the digest of an image that had none (and of its Available copies without one).
  void Record(const std::string& image_id, const std::string& digest);
  // How far the digest of `image_id` being computed got; nullopt when none is.
  std::optional<IoProgress> Progress(const std::string& image_id) const;
  // Why this process could not compute the digest of `image_id`, if it could not.
  std::optional<DigestFailure> Failure(const std::string& image_id) const;
  // Whether the loop runs (or was scheduled).
  bool Running() const;
  // Stops the digest being computed and the loop (the engine is closing): for good.
  void Stop() { cancel_.Cancel(); }

 private:
  void Loop();
  // Computes and records the digest of `image`; a failure is remembered. False if it was
  // stopped.
  bool Digest(const Image& image);

  const Parts parts_;
  CancelToken cancel_;  // fired by Stop()
  mutable std::mutex mutex_;
  bool running_ = false;  // under mutex_
  bool rescan_ = false;   // under mutex_: look again before stopping
  // image id -> how far the digest being computed got (WaitDigest's progress).
  std::map<std::string, IoProgress> progress_;
  // image id -> a digest this process failed to compute (not retried until the next open).
  std::map<std::string, DigestFailure> failures_;
};

}  // namespace imagerelay
