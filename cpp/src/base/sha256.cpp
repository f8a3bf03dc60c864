#include "imagerelay/sha256.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <new>
#include <stdexcept>

namespace imagerelay {
namespace {

struct CtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using CtxPtr = std::unique_ptr<EVP_MD_CTX, CtxDeleter>;

// Fetched once: an implicit fetch on every init costs a provider lookup under a lock.
const EVP_MD* Sha256Md() {
  static const EVP_MD* md = [] {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    if (const EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA256", nullptr)) return fetched;
#endif
    return EVP_sha256();
  }();
  return md;
}

void Check(int ok, const char* what) {
  if (ok != 1) throw std::runtime_error(std::string("OpenSSL ") + what + " failed");
}

constexpr size_t kZeroBlock = 1 << 20;
alignas(64) constexpr std::array<unsigned char, kZeroBlock> kZeros{};

std::string ToHex(const unsigned char* bytes, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex(n * 2, '\0');
  for (size_t i = 0; i < n; ++i) {
    hex[2 * i] = kDigits[bytes[i] >> 4];
    hex[2 * i + 1] = kDigits[bytes[i] & 0xf];
  }
  return hex;
}

}  // namespace

struct Sha256::Impl {
  CtxPtr ctx{EVP_MD_CTX_new()};
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {
  if (!impl_->ctx) throw std::bad_alloc();
  Check(EVP_DigestInit_ex(impl_->ctx.get(), Sha256Md(), nullptr), "digest init");
}

Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::Update(const void* data, size_t len) {
  // SHA-NI hashes ~1.6 GB/s from the caches but ~1.05 GB/s from memory on this kind of
  // machine: it reads its input a 64-byte block at a time and the hardware prefetcher does
  // not keep ahead of it (measured on 1 GiB). Fed a step at a time with the next step
  // prefetched, it runs at cache speed on data a read just brought in by DMA (an import's
  // and a copy's blocks, read with O_DIRECT).
  constexpr size_t kStep = 1024;
  constexpr size_t kLine = 64;
  const auto* bytes = static_cast<const unsigned char*>(data);
  while (len > kStep) {
    const size_t next = std::min(kStep, len - kStep);
    for (size_t line = 0; line < next; line += kLine) __builtin_prefetch(bytes + kStep + line);
    Check(EVP_DigestUpdate(impl_->ctx.get(), bytes, kStep), "digest update");
    bytes += kStep;
    len -= kStep;
  }
  if (len > 0) Check(EVP_DigestUpdate(impl_->ctx.get(), bytes, len), "digest update");
}

void Sha256::UpdateZeros(uint64_t n) {
  while (n > 0) {
    size_t step = n < kZeroBlock ? static_cast<size_t>(n) : kZeroBlock;
    Update(kZeros.data(), step);
    n -= step;
  }
}

std::string Sha256::FinishHex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  Check(EVP_DigestFinal_ex(impl_->ctx.get(), digest, &len), "digest final");
  Check(EVP_DigestInit_ex(impl_->ctx.get(), Sha256Md(), nullptr), "digest init");
  return ToHex(digest, len);
}

std::string Sha256Hex(const void* data, size_t len) {
  Sha256 sha;
  sha.Update(data, len);
  return sha.FinishHex();
}

bool IsAllZero(const void* data, size_t len) {
  const auto* p = static_cast<const unsigned char*>(data);
  constexpr size_t kHead = 16;
  // Zero head + each byte equal to the one kHead before it => every byte is zero; memcmp
  // runs at vector speed and stops at the first difference.
  size_t head = len < kHead ? len : kHead;
  for (size_t i = 0; i < head; ++i) {
    if (p[i] != 0) return false;
  }
  return len <= kHead || std::memcmp(p, p + kHead, len - kHead) == 0;
}

}  // namespace imagerelay
