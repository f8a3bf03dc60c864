// SHA-256 over OpenSSL's EVP interface (SHA-NI where the CPU has it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace imagerelay {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  void Update(const void* data, size_t len);
  // Adds n zero bytes without the caller allocating them.
  void UpdateZeros(uint64_t n);
  std::string FinishHex();  // 64 lowercase hex chars; the object is reset afterwards

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string Sha256Hex(const void* data, size_t len);
// True if every byte is zero (fast word-wise scan).
bool IsAllZero(const void* data, size_t len);

}  // namespace imagerelay
