#include "imagerelay/error.hpp"

#include <array>

namespace imagerelay {
namespace {

struct CodeInfo {
  std::string_view code;
  ErrorKind kind;
  int http_status;
};

constexpr std::array kCodeTable{
    CodeInfo{codes::kInvalidParameter, ErrorKind::kValidation, 400},
    CodeInfo{codes::kPolicyViolation, ErrorKind::kValidation, 403},
    CodeInfo{codes::kNotSupportCopy, ErrorKind::kValidation, 409},
    CodeInfo{codes::kLargeImageCopyForbidden, ErrorKind::kValidation, 409},
    CodeInfo{codes::kLargeImageImportForbidden, ErrorKind::kValidation, 409},
    CodeInfo{codes::kRegionNotSupportCopy, ErrorKind::kValidation, 409},
    CodeInfo{codes::kDestRegionIsEmpty, ErrorKind::kValidation, 400},
    CodeInfo{codes::kUnCustomImageCannotBeShared, ErrorKind::kValidation, 403},
    CodeInfo{codes::kAccountListIsEmpty, ErrorKind::kValidation, 400},
    CodeInfo{codes::kInvalidAccount, ErrorKind::kValidation, 400},
    CodeInfo{codes::kCannotShareToOwner, ErrorKind::kValidation, 403},
    CodeInfo{codes::kUnCustomImageCannotBeDeleted, ErrorKind::kValidation, 403},
    CodeInfo{codes::kNoSuchImage, ErrorKind::kNotFound, 404},
    CodeInfo{codes::kNoSuchRegion, ErrorKind::kNotFound, 404},
    CodeInfo{codes::kNoSuchAccount, ErrorKind::kNotFound, 404},
    CodeInfo{codes::kNoSuchJob, ErrorKind::kNotFound, 404},
    CodeInfo{codes::kAccessDenied, ErrorKind::kPermissionDenied, 403},
    CodeInfo{codes::kImageStatusForbidden, ErrorKind::kImageBusy, 409},
    CodeInfo{codes::kCreatingImageCannotBeDeleted, ErrorKind::kImageBusy, 409},
    CodeInfo{codes::kAccountHasBeenShared, ErrorKind::kConflict, 409},
    CodeInfo{codes::kAccountNotShared, ErrorKind::kConflict, 409},
    CodeInfo{codes::kImageHasBeenSharedToOthers, ErrorKind::kConflict, 409},
    CodeInfo{codes::kIdempotentParameterMismatch, ErrorKind::kConflict, 409},
    CodeInfo{codes::kAlreadyExists, ErrorKind::kConflict, 409},
    CodeInfo{codes::kRegionInUse, ErrorKind::kConflict, 409},
    CodeInfo{codes::kAccountInUse, ErrorKind::kConflict, 409},
    CodeInfo{codes::kExceedSharedToUserNumQuota, ErrorKind::kQuotaExceeded, 413},
    CodeInfo{codes::kExceedAcceptSharedImageNumQuota, ErrorKind::kQuotaExceeded, 413},
    CodeInfo{codes::kTransferFailed, ErrorKind::kTransfer, 500},
    CodeInfo{codes::kIntegrityError, ErrorKind::kIntegrity, 500},
    CodeInfo{codes::kStoreUnavailable, ErrorKind::kTransfer, 503},
    CodeInfo{codes::kCatalogUnavailable, ErrorKind::kTransfer, 503},
    CodeInfo{codes::kJobFailed, ErrorKind::kReplicationFailed, 500},
    CodeInfo{codes::kTimeout, ErrorKind::kTimeout, 504},
};

const CodeInfo* FindCode(std::string_view code) {
  for (const auto& info : kCodeTable) {
    if (info.code == code) return &info;
  }
  return nullptr;
}

}  // namespace

ErrorKind KindOfCode(std::string_view code) {
  const CodeInfo* info = FindCode(code);
  return info ? info->kind : ErrorKind::kTransfer;
}

int HttpStatusOfCode(std::string_view code) {
  const CodeInfo* info = FindCode(code);
  return info ? info->http_status : 500;
}

std::string_view ErrorKindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kValidation: return "Validation";
    case ErrorKind::kNotFound: return "NotFound";
    case ErrorKind::kPermissionDenied: return "PermissionDenied";
    case ErrorKind::kImageBusy: return "ImageBusy";
    case ErrorKind::kConflict: return "Conflict";
    case ErrorKind::kQuotaExceeded: return "QuotaExceeded";
    case ErrorKind::kTransfer: return "Transfer";
    case ErrorKind::kIntegrity: return "Integrity";
    case ErrorKind::kReplicationFailed: return "ReplicationFailed";
    case ErrorKind::kTimeout: return "Timeout";
  }
  return "Transfer";
}

std::vector<std::string_view> AllErrorCodes() {
  std::vector<std::string_view> out;
  for (const auto& info : kCodeTable) out.push_back(info.code);
  return out;
}

Error::Error(std::string code, std::string message, std::vector<Problem> problems)
    : std::runtime_error(code + ": " + message),
      code_(std::move(code)),
      message_(std::move(message)),
      problems_(std::move(problems)) {
  if (problems_.empty()) problems_.push_back({code_, message_});
}

namespace {

template <typename E>
[[noreturn]] void Throw(const std::string& code, const std::string& message,
                        std::vector<Problem> problems) {
  throw E(code, message, std::move(problems));
}

[[noreturn]] void ThrowKind(const std::string& code, const std::string& message,
                            std::vector<Problem> problems) {
  switch (KindOfCode(code)) {
    case ErrorKind::kValidation: Throw<ValidationError>(code, message, std::move(problems));
    case ErrorKind::kNotFound: Throw<NotFoundError>(code, message, std::move(problems));
    case ErrorKind::kPermissionDenied:
      Throw<PermissionDeniedError>(code, message, std::move(problems));
    case ErrorKind::kImageBusy: Throw<ImageBusyError>(code, message, std::move(problems));
    case ErrorKind::kConflict: Throw<ConflictError>(code, message, std::move(problems));
    case ErrorKind::kQuotaExceeded: Throw<QuotaExceededError>(code, message, std::move(problems));
    case ErrorKind::kIntegrity: Throw<IntegrityError>(code, message, std::move(problems));
    case ErrorKind::kTransfer:
    case ErrorKind::kReplicationFailed:
    case ErrorKind::kTimeout: break;
  }
  Throw<TransferError>(code, message, std::move(problems));
}

}  // namespace

void ThrowIfAny(const std::vector<Problem>& problems) {
  if (problems.empty()) return;
  ThrowKind(problems.front().code, problems.front().message, problems);
}

void ThrowCode(const std::string& code, const std::string& message) {
  ThrowKind(code, message, {});
}

}  // namespace imagerelay
