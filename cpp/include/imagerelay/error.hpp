// Error hierarchy: every failure a caller can see carries a stable code (DESIGN.md §2,
// API.md "Errors"). Classes map one-to-one onto the Python exceptions.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace imagerelay {

// One failed rule: the stable code and a message that names the object and says what to do.
struct Problem {
  std::string code;
  std::string message;
  bool operator==(const Problem&) const = default;
};

// Which exception class a code belongs to.
enum class ErrorKind {
  kValidation,
  kNotFound,
  kPermissionDenied,
  kImageBusy,
  kConflict,
  kQuotaExceeded,
  kTransfer,
  kIntegrity,
  kReplicationFailed,
  kTimeout,
};

// The kind and HTTP status of a stable code; unknown codes are kTransfer / 500.
ErrorKind KindOfCode(std::string_view code);
int HttpStatusOfCode(std::string_view code);
// "Validation", "NotFound", ...: the name Python maps to an exception class.
std::string_view ErrorKindName(ErrorKind kind);
// Every stable code the core raises, in the order of its table.
std::vector<std::string_view> AllErrorCodes();

class Error : public std::runtime_error {
 public:
  Error(std::string code, std::string message, std::vector<Problem> problems = {});
  const std::string& code() const { return code_; }
  const std::string& message() const { return message_; }
  int http_status() const { return HttpStatusOfCode(code_); }
  ErrorKind kind() const { return KindOfCode(code_); }
  // Every failed rule (validation); for other errors, the one problem itself.
  const std::vector<Problem>& problems() const { return problems_; }

 private:
  std::string code_;
  std::string message_;
  std::vector<Problem> problems_;
};

// One line each: the classes say nothing but their kind.
// clang-format off
class ValidationError : public Error { using Error::Error; };
class NotFoundError : public Error { using Error::Error; };
class PermissionDeniedError : public Error { using Error::Error; };
class ImageBusyError : public Error { using Error::Error; };
class ConflictError : public Error { using Error::Error; };
class QuotaExceededError : public Error { using Error::Error; };
class TransferError : public Error { using Error::Error; };
class IntegrityError : public TransferError { using TransferError::TransferError; };
// clang-format on

// Throws the exception class of problems[0].code, carrying every problem. No-op if empty.
void ThrowIfAny(const std::vector<Problem>& problems);
// Throws the class that matches `code`.
[[noreturn]] void ThrowCode(const std::string& code, const std::string& message);

namespace codes {
inline constexpr const char* kInvalidParameter = "InvalidParameter";
inline constexpr const char* kPolicyViolation = "PolicyViolation";
inline constexpr const char* kNotSupportCopy = "Image.ImageNotSupportCopy";
inline constexpr const char* kLargeImageCopyForbidden = "Image.LargeImageCopyForbidden";
inline constexpr const char* kLargeImageImportForbidden = "Image.LargeImageImportForbidden";
inline constexpr const char* kRegionNotSupportCopy = "Image.RegionNotSupportCopy";
inline constexpr const char* kDestRegionIsEmpty = "Image.DestRegionIsEmpty";
inline constexpr const char* kUnCustomImageCannotBeShared = "Image.UnCustomImageCannotBeShared";
inline constexpr const char* kAccountListIsEmpty = "Image.AccountListIsEmpty";
inline constexpr const char* kInvalidAccount = "Image.InvalidAccount";
inline constexpr const char* kCannotShareToOwner = "Image.CannotShareToOwner";
inline constexpr const char* kUnCustomImageCannotBeDeleted = "Image.UnCustomImageCannotBeDeleted";
inline constexpr const char* kNoSuchImage = "NoSuchImage";
inline constexpr const char* kNoSuchRegion = "NoSuchRegion";
inline constexpr const char* kNoSuchAccount = "NoSuchAccount";
inline constexpr const char* kNoSuchJob = "NoSuchJob";
inline constexpr const char* kAccessDenied = "AccessDenied";
inline constexpr const char* kImageStatusForbidden = "Image.ImageStatusForbidden";
inline constexpr const char* kCreatingImageCannotBeDeleted = "Image.CreatingImageCannotBeDeleted";
inline constexpr const char* kAccountHasBeenShared = "Image.AccountHasBeenShared";
inline constexpr const char* kAccountNotShared = "Image.AccountNotShared";
inline constexpr const char* kImageHasBeenSharedToOthers = "Image.ImageHasBeenSharedToOthers";
inline constexpr const char* kIdempotentParameterMismatch = "IdempotentParameterMismatch";
inline constexpr const char* kAlreadyExists = "AlreadyExists";
inline constexpr const char* kRegionInUse = "Region.InUse";
inline constexpr const char* kAccountInUse = "Account.InUse";
inline constexpr const char* kExceedSharedToUserNumQuota = "Image.ExceedSharedToUserNumQuota";
inline constexpr const char* kExceedAcceptSharedImageNumQuota =
    "Image.ExceedAcceptSharedImageNumQuota";
inline constexpr const char* kTransferFailed = "Transfer.Failed";
inline constexpr const char* kIntegrityError = "Transfer.IntegrityError";
inline constexpr const char* kStoreUnavailable = "Region.StoreUnavailable";
inline constexpr const char* kCatalogUnavailable = "Catalog.Unavailable";
inline constexpr const char* kJobFailed = "Job.Failed";
inline constexpr const char* kTimeout = "Timeout";
}  // namespace codes

// A transient error: retried with backoff by the transfer engine. Stores throw it for
// timeouts, resets, 5xx, 429. Anything else a store throws is permanent for that copy.
class TransientError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A stored chunk whose bytes do not match its name (or its length): the engine quarantines
// it and marks the images that need it (Integrity::ReportDamagedChunk).
class DamagedChunkError : public IntegrityError {
 public:
  DamagedChunkError(std::string hash, std::string message)
      : IntegrityError(codes::kIntegrityError, std::move(message)), hash_(std::move(hash)) {}
  const std::string& hash() const { return hash_; }

 private:
  std::string hash_;
};

}  // namespace imagerelay
