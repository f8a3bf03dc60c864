// The SHA-256 of a whole image, fed in order by an import or a verify.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "base/sha256_pair.hpp"
#include "imagerelay/sha256.hpp"

namespace imagerelay {

// With SHA-NI a paired stream (base/sha256_pair.hpp), which names each block fed to it at
// little cost beside the digest; elsewhere OpenSSL's, which names nothing (names() false).
class ImageDigest {
 public:
  ImageDigest() {
    if (Sha256PairInterleaves()) paired_.emplace();
  }

  // True when UpdateAndName and UpdateIfNamed may be called.
  bool names() const { return paired_.has_value(); }

  void Update(std::span<const std::byte> data) {
    if (paired_) return paired_->Update(data);
    plain_.Update(data.data(), data.size());
  }

  void UpdateZeros(uint64_t count) {
    if (paired_) return paired_->UpdateZeros(count);
    plain_.UpdateZeros(count);
  }

  // Feeds `block` and sets `name` to its own SHA-256 (names() only).
  void UpdateAndName(std::span<const std::byte> block, std::string& name) {
    paired_->UpdateAndName(block, name);
  }

  // Feeds `block` if its SHA-256 is `hash`; else leaves the digest as it was and returns
  // false (names() only): a block read without its check is checked here.
  bool UpdateIfNamed(std::span<const std::byte> block, const std::string& hash) {
    const Sha256PairedStream before = *paired_;
    std::string name;
    paired_->UpdateAndName(block, name);
    if (name == hash) return true;
    *paired_ = before;
    return false;
  }

  std::string FinishHex() { return paired_ ? paired_->FinishHex() : plain_.FinishHex(); }

 private:
  Sha256 plain_;
  std::optional<Sha256PairedStream> paired_;
};

}  // namespace imagerelay
