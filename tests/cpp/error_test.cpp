#include "imagerelay/error.hpp"

#include <gtest/gtest.h>

namespace imagerelay {
namespace {

template <typename E>
void ExpectThrows(const std::string& code, int status) {
  try {
    ThrowCode(code, "message");
    FAIL() << "no exception for " << code;
  } catch (const E& e) {
    EXPECT_EQ(e.code(), code);
    EXPECT_EQ(e.http_status(), status) << code;
    ASSERT_EQ(e.problems().size(), 1u);
    EXPECT_EQ(e.problems()[0].code, code);
  } catch (const Error& e) {
    FAIL() << code << " threw the wrong class";
  }
}

// API.md "Errors": every code with its class and HTTP status.
TEST(ErrorTest, EveryCodeMapsToItsClassAndStatus) {
  ExpectThrows<ValidationError>(codes::kInvalidParameter, 400);
  ExpectThrows<ValidationError>(codes::kPolicyViolation, 403);
  ExpectThrows<ValidationError>(codes::kNotSupportCopy, 409);
  ExpectThrows<ValidationError>(codes::kLargeImageCopyForbidden, 409);
  ExpectThrows<ValidationError>(codes::kLargeImageImportForbidden, 409);
  ExpectThrows<ValidationError>(codes::kRegionNotSupportCopy, 409);
  ExpectThrows<ValidationError>(codes::kDestRegionIsEmpty, 400);
  ExpectThrows<ValidationError>(codes::kUnCustomImageCannotBeShared, 403);
  ExpectThrows<ValidationError>(codes::kAccountListIsEmpty, 400);
  ExpectThrows<ValidationError>(codes::kInvalidAccount, 400);
  ExpectThrows<ValidationError>(codes::kCannotShareToOwner, 403);
  ExpectThrows<ValidationError>(codes::kUnCustomImageCannotBeDeleted, 403);
  ExpectThrows<NotFoundError>(codes::kNoSuchImage, 404);
  ExpectThrows<NotFoundError>(codes::kNoSuchRegion, 404);
  ExpectThrows<NotFoundError>(codes::kNoSuchAccount, 404);
  ExpectThrows<NotFoundError>(codes::kNoSuchJob, 404);
  ExpectThrows<PermissionDeniedError>(codes::kAccessDenied, 403);
  ExpectThrows<ImageBusyError>(codes::kImageStatusForbidden, 409);
  ExpectThrows<ImageBusyError>(codes::kCreatingImageCannotBeDeleted, 409);
  ExpectThrows<ConflictError>(codes::kAccountHasBeenShared, 409);
  ExpectThrows<ConflictError>(codes::kAccountNotShared, 409);
  ExpectThrows<ConflictError>(codes::kImageHasBeenSharedToOthers, 409);
  ExpectThrows<ConflictError>(codes::kIdempotentParameterMismatch, 409);
  ExpectThrows<ConflictError>(codes::kAlreadyExists, 409);
  ExpectThrows<QuotaExceededError>(codes::kExceedSharedToUserNumQuota, 413);
  ExpectThrows<QuotaExceededError>(codes::kExceedAcceptSharedImageNumQuota, 413);
  ExpectThrows<TransferError>(codes::kTransferFailed, 500);
  ExpectThrows<IntegrityError>(codes::kIntegrityError, 500);
  ExpectThrows<TransferError>(codes::kStoreUnavailable, 503);
}

TEST(ErrorTest, ThrowIfAnyRaisesTheFirstAndCarriesAll) {
  std::vector<Problem> problems{{codes::kAccessDenied, "a"}, {codes::kInvalidParameter, "b"}};
  try {
    ThrowIfAny(problems);
    FAIL();
  } catch (const PermissionDeniedError& e) {
    EXPECT_EQ(e.code(), codes::kAccessDenied);
    EXPECT_EQ(e.problems(), problems);
  }
  EXPECT_NO_THROW(ThrowIfAny({}));
}

}  // namespace
}  // namespace imagerelay
