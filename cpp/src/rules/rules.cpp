#include "imagerelay/rules.hpp"

#include <algorithm>
#include <cstdint>
#include <string>

#include "base/human_bytes.hpp"
#include "base/url_redaction.hpp"
#include "imagerelay/ids.hpp"

namespace imagerelay {
namespace {

using Problems = std::vector<Problem>;

std::string Busy(const Image& image, std::string_view action) {
  std::string what = image.status == ImageStatus::kReplicating
                         ? "copies are in flight; wait for them or cancel them"
                     : image.status == ImageStatus::kNotAvailable
                         ? "its stored bytes are damaged (" + image.error +
                               "); run `imagerelay scrub` to repair it from another region"
                         : "wait until it is Available";
  return "image " + image.id + " is " + std::string(ToString(image.status)) + "; " + what +
         " before you " + std::string(action) + " it";
}

// Ownership for a mutating call on a Custom image. System images have no owner and are
// answered by the type rule instead.
void CheckOwner(const Image& image, const std::string& caller, Problems& out) {
  if (image.type == ImageType::kCustom && image.owner != caller) {
    out.push_back({codes::kAccessDenied, "image " + image.id + " belongs to another account; " +
                                             "only its owner may change it"});
  }
}

// "Limits.<name> must be an integer between <low> and <high>, got <value>" unless in range.
void CheckRange(const char* name, int64_t value, int64_t low, int64_t high,
                std::string_view high_text, Problems& out) {
  if (value >= low && value <= high) return;
  out.push_back(
      {codes::kInvalidParameter, std::string("Limits.") + name + " must be an integer between " +
                                     std::to_string(low) + " and " + std::string(high_text) +
                                     ", got " + std::to_string(value)});
}

// "m-1, m-2 and 3 more": the first few ids of a list, for a message.
std::string FewOf(const std::vector<std::string>& ids) {
  constexpr size_t kShown = 5;
  std::string out;
  for (size_t i = 0; i < ids.size() && i < kShown; ++i) out += (i ? ", " : "") + ids[i];
  if (ids.size() > kShown) out += " and " + std::to_string(ids.size() - kShown) + " more";
  return out;
}

}  // namespace

Problems CheckLimits(const Limits& l) {
  constexpr int64_t kInt64Max = INT64_MAX;
  constexpr int64_t kInt32Max = INT32_MAX;
  // A uint64_t past 2**63-1 reads as negative here: out of range all the same.
  auto u = [](uint64_t v) { return static_cast<int64_t>(v); };
  Problems out;
  CheckRange("max_copy_bytes", u(l.max_copy_bytes), 1, kInt64Max, "2**63-1", out);
  CheckRange("max_import_bytes", u(l.max_import_bytes), 1, kInt64Max, "2**63-1", out);
  CheckRange("max_share_accounts", l.max_share_accounts, 0, kInt32Max, "2**31-1", out);
  CheckRange("max_accepted_shares", l.max_accepted_shares, 0, kInt32Max, "2**31-1", out);
  CheckRange("chunk_size", u(l.chunk_size), 4096, 256 << 20, std::to_string(256 << 20), out);
  CheckRange("max_tasks_per_region", l.max_tasks_per_region, 1, kInt32Max, "2**31-1", out);
  CheckRange("buffer_memory", u(l.buffer_memory), 1, kInt64Max, "2**63-1", out);
  CheckRange("bandwidth", u(l.bandwidth), 0, kInt64Max, "2**63-1", out);
  return out;
}

Problems CheckImageIdFormat(const std::string& id) {
  if (IsValidImageId(id)) return {};
  return {{codes::kInvalidParameter,
           "image id " + Quote(id) + " is malformed; image ids look like m-3k9x2q7a"}};
}

Problems CheckJobIdFormat(const std::string& id) {
  if (IsValidJobId(id)) return {};
  return {{codes::kInvalidParameter,
           "job id " + Quote(id) + " is malformed; job ids look like j-3k9x2q7a"}};
}

Problems CheckImageName(const std::string& name) {
  if (IsValidImageName(name)) return {};
  return {{codes::kInvalidParameter,
           "image name " + Quote(name) +
               " is invalid; use 1-65 characters starting with a letter, then letters, "
               "digits, '-', '_', '.', '/'"}};
}

Problems CheckRegionId(const std::string& id) {
  if (IsValidRegionId(id)) return {};
  return {{codes::kInvalidParameter,
           "region id " + Quote(id) +
               " is invalid; use 2-32 characters: a lowercase letter, then lowercase letters, "
               "digits or '-'"}};
}

Problems CheckAccountId(const std::string& id) {
  if (IsValidAccountId(id)) return {};
  return {{codes::kInvalidParameter,
           "account id " + Quote(id) +
               " is invalid; use 1-64 characters: a letter or digit, then letters, digits, "
               "'_', '.', '@' or '-'"}};
}

bool CanSee(const Image& image, const std::string& caller, bool shared_with_caller) {
  if (image.status == ImageStatus::kDeleted) return false;
  return image.type == ImageType::kSystem || image.owner == caller || shared_with_caller;
}

std::string TypeSeenBy(const Image& image, const std::string& caller) {
  if (image.type == ImageType::kCustom && image.owner != caller) return "Sharing";
  return std::string(ToString(image.type));
}

bool EventVisibleTo(const Event& event, const std::string& caller, const EventImageFacts& facts) {
  if (event.account == caller) return true;
  if (event.image_id.empty() || !facts.image) return false;
  const Image& image = *facts.image;
  if (image.type == ImageType::kSystem) return image.status != ImageStatus::kDeleted;
  if (image.owner == caller) return true;  // its own image, deleted or not
  return facts.shared_since_us && image.status != ImageStatus::kDeleted &&
         event.time_us >= *facts.shared_since_us;
}

Event EventSeenBy(Event event, const std::string& caller, const EventImageFacts& facts) {
  const bool owns =
      facts.image && facts.image->type == ImageType::kCustom && facts.image->owner == caller;
  if (event.account != caller && !owns) event.detail_json = "{}";
  return event;
}

Problems CheckImport(const ImportRequest& request, bool region_exists,
                     const std::optional<ImportSourceFacts>& source, const Limits& limits) {
  Problems out;
  if (!region_exists) {
    out.push_back({codes::kNoSuchRegion, "region " + Quote(request.region) +
                                             " does not exist; list regions or add it first"});
  }
  auto name = CheckImageName(request.name);
  out.insert(out.end(), name.begin(), name.end());
  static const std::set<std::string> kFormats{"raw", "qcow2", "vmdk", "vhd"};
  if (!request.format.empty() && !kFormats.contains(request.format)) {
    out.push_back({codes::kInvalidParameter,
                   "format " + Quote(request.format) + " is unknown; use raw, qcow2, vmdk or vhd"});
  } else if (!request.format.empty() && source && source->disk.format != request.format) {
    out.push_back({codes::kInvalidParameter,
                   "source " + Quote(RedactUrl(request.source)) + " is a " + source->disk.format +
                       " image (its header says so), not " + request.format + "; import it as " +
                       source->disk.format + ", or leave the format out to take the header's"});
  }
  for (const auto* field :
       {&request.os_type, &request.os_name, &request.os_version, &request.os_arch}) {
    if (field->size() > 64 || field->find('\0') != std::string::npos) {
      out.push_back({codes::kInvalidParameter,
                     "OS field " + Quote(*field) + " is invalid; use at most 64 characters"});
    }
  }
  if (request.description.size() > 1024) {
    out.push_back({codes::kInvalidParameter, "description is longer than 1024 characters"});
  }
  // BCC: "Image vsize must be 500 GB or less". A qcow2 with internal snapshots may be a
  // larger file than its disk: the import limit bounds both.
  if (source && std::max(source->disk.virtual_size, source->file_size) > limits.max_import_bytes) {
    const bool sparse_format = source->disk.format != "raw";
    out.push_back({codes::kLargeImageImportForbidden,
                   "source " + Quote(RedactUrl(request.source)) + " holds a disk of " +
                       HumanAndExactBytes(source->disk.virtual_size) +
                       (sparse_format ? " (a " + HumanBytes(source->file_size) + " file)" : "") +
                       ", over the import limit of " + HumanAndExactBytes(limits.max_import_bytes) +
                       "; import a smaller disk, or open the home with a higher "
                       "Limits.max_import_bytes"});
  }
  return out;
}

Problems CheckReplicate(const Image& image, const std::string& caller,
                        const std::vector<std::string>& destinations, const std::string* name,
                        const ReplicateFacts& facts, const Limits& limits) {
  Problems out;
  CheckOwner(image, caller, out);
  if (image.type != ImageType::kCustom) {
    out.push_back({codes::kNotSupportCopy,
                   "image " + image.id + " is a System image; only Custom images can be copied"});
  }
  if (DiskSize(image) > limits.max_copy_bytes) {
    out.push_back({codes::kLargeImageCopyForbidden,
                   "image " + image.id + " holds a disk of " + HumanAndExactBytes(DiskSize(image)) +
                       ", over the copy limit of " + HumanAndExactBytes(limits.max_copy_bytes) +
                       "; copy a smaller image, or open the home with a higher "
                       "Limits.max_copy_bytes"});
  }
  if (image.status != ImageStatus::kAvailable) {
    out.push_back({codes::kImageStatusForbidden, Busy(image, "replicate")});
  }
  auto unique = Unique(destinations);
  if (unique.empty()) {
    out.push_back({codes::kDestRegionIsEmpty, "no destination region given; name at least one"});
  }
  for (const auto& region : unique) {
    if (region == image.region) {
      out.push_back({codes::kRegionNotSupportCopy, "image " + image.id +
                                                       " already lives in region " + region +
                                                       "; choose other destination regions"});
    } else if (!facts.known_regions.contains(region)) {
      out.push_back({codes::kRegionNotSupportCopy,
                     "region " + Quote(region) + " does not exist; list regions or add it first"});
    }
  }
  if (name != nullptr) {
    auto bad = CheckImageName(*name);
    out.insert(out.end(), bad.begin(), bad.end());
  }
  return out;
}

Problems CheckShare(const Image& image, const std::string& caller,
                    const std::vector<std::string>& accounts, const ShareFacts& facts,
                    const Limits& limits) {
  Problems out;
  CheckOwner(image, caller, out);
  if (image.type != ImageType::kCustom) {
    out.push_back({codes::kUnCustomImageCannotBeShared,
                   "image " + image.id + " is a System image; only Custom images can be shared"});
  }
  if (image.status != ImageStatus::kAvailable) {
    out.push_back({codes::kImageStatusForbidden, Busy(image, "share")});
  }
  auto unique = Unique(accounts);
  if (unique.empty()) {
    out.push_back(
        {codes::kAccountListIsEmpty, "no account given; name at least one to share with"});
  }
  std::vector<std::string> fresh;
  for (const auto& account : unique) {
    if (!facts.known_accounts.contains(account)) {
      out.push_back({codes::kInvalidAccount,
                     "account " + Quote(account) + " does not exist; check the id or add it"});
    } else if (account == image.owner) {
      out.push_back({codes::kCannotShareToOwner, "account " + account + " owns image " + image.id +
                                                     "; it cannot be shared "
                                                     "with its owner"});
    } else if (std::ranges::find(facts.current_shares, account) != facts.current_shares.end()) {
      out.push_back({codes::kAccountHasBeenShared,
                     "image " + image.id + " is already shared with " + account});
    } else {
      fresh.push_back(account);
    }
  }
  if (facts.current_shares.size() + fresh.size() > static_cast<size_t>(limits.max_share_accounts)) {
    out.push_back({codes::kExceedSharedToUserNumQuota,
                   "image " + image.id + " would be shared with " +
                       std::to_string(facts.current_shares.size() + fresh.size()) +
                       " accounts, over the limit of " + std::to_string(limits.max_share_accounts) +
                       "; unshare some first"});
  }
  for (const auto& account : fresh) {
    auto it = facts.accepted_in_region.find(account);
    int accepted = it == facts.accepted_in_region.end() ? 0 : it->second;
    if (accepted + 1 > limits.max_accepted_shares) {
      out.push_back({codes::kExceedAcceptSharedImageNumQuota,
                     "account " + account + " already has " + std::to_string(accepted) +
                         " images shared with it in region " + image.region +
                         ", the limit; it must be unshared from one first"});
    }
  }
  return out;
}

Problems CheckUnshare(const Image& image, const std::string& caller,
                      const std::vector<std::string>& accounts, const ShareFacts& facts) {
  Problems out;
  CheckOwner(image, caller, out);
  if (image.type != ImageType::kCustom) {
    out.push_back({codes::kUnCustomImageCannotBeShared,
                   "image " + image.id + " is a System image; it has no shares"});
  }
  // A damaged (NotAvailable) image may be unshared, so that its owner can then delete it.
  if (image.status != ImageStatus::kAvailable && image.status != ImageStatus::kNotAvailable) {
    out.push_back({codes::kImageStatusForbidden, Busy(image, "unshare")});
  }
  auto unique = Unique(accounts);
  if (unique.empty()) {
    out.push_back({codes::kAccountListIsEmpty, "no account given; name at least one to unshare"});
  }
  for (const auto& account : unique) {
    if (!facts.known_accounts.contains(account)) {
      out.push_back(
          {codes::kInvalidAccount, "account " + Quote(account) + " does not exist; check the id"});
    } else if (std::ranges::find(facts.current_shares, account) == facts.current_shares.end()) {
      out.push_back(
          {codes::kAccountNotShared, "image " + image.id + " is not shared with " + account});
    }
  }
  return out;
}

Problems CheckRename(const Image& image, const std::string& caller, const std::string& name) {
  Problems out;
  if (image.type != ImageType::kCustom || image.owner != caller) {
    out.push_back({codes::kAccessDenied,
                   "image " + image.id + " is not yours; only its owner may rename it"});
  }
  if (image.status == ImageStatus::kReplicating || image.status == ImageStatus::kCreating) {
    out.push_back({codes::kImageStatusForbidden, Busy(image, "rename")});
  }
  auto bad = CheckImageName(name);
  out.insert(out.end(), bad.begin(), bad.end());
  return out;
}

Problems CheckDelete(const Image& image, const std::string& caller, size_t share_count) {
  Problems out;
  CheckOwner(image, caller, out);
  if (image.type != ImageType::kCustom) {
    out.push_back({codes::kUnCustomImageCannotBeDeleted,
                   "image " + image.id + " is a System image; only Custom images can be deleted"});
  }
  if (image.status == ImageStatus::kCreating) {
    out.push_back({codes::kCreatingImageCannotBeDeleted,
                   "image " + image.id + " is still being created; wait for it to finish"});
  } else if (image.status == ImageStatus::kReplicating) {
    out.push_back({codes::kImageStatusForbidden, Busy(image, "delete")});
  }
  if (share_count > 0) {
    out.push_back({codes::kImageHasBeenSharedToOthers, "image " + image.id + " is shared with " +
                                                           std::to_string(share_count) +
                                                           " account(s); unshare it first"});
  }
  return out;
}

Problems CheckSharedUsers(const Image& image, const std::string& caller) {
  if (image.type == ImageType::kCustom && image.owner == caller) return {};
  return {{codes::kAccessDenied,
           "image " + image.id + " is not yours; only its owner may list its shares"}};
}

namespace {

// The copies in flight that keep a region from being removed or moved.
void CopiesInFlight(const std::string& region_id, const std::vector<std::string>& jobs,
                    Problems& out) {
  if (jobs.empty()) return;
  out.push_back({codes::kRegionInUse, "copies to or from region " + region_id +
                                          " are in flight (job " + FewOf(jobs) +
                                          "); wait for them or cancel them first"});
}

}  // namespace

Problems CheckRemoveRegion(const std::string& region_id, const RegionUse& use) {
  Problems out;
  if (!use.images.empty()) {
    out.push_back({codes::kRegionInUse,
                   "region " + region_id + " still holds " + std::to_string(use.images.size()) +
                       " image(s) (" + FewOf(use.images) +
                       "); delete them first (CreateFailed ones too), or replicate the ones "
                       "you keep to another region and delete them here"});
  }
  CopiesInFlight(region_id, use.jobs_in_flight, out);
  return out;
}

Problems CheckMoveRegion(const std::string& region_id, const RegionUse& in_flight) {
  Problems out;
  if (!in_flight.images.empty()) {
    out.push_back({codes::kRegionInUse, "imports into region " + region_id +
                                            " are in flight (image " + FewOf(in_flight.images) +
                                            "); wait for them or cancel them first"});
  }
  CopiesInFlight(region_id, in_flight.jobs_in_flight, out);
  return out;
}

Problems CheckRemoveAccount(const std::string& account_id, const AccountUse& use) {
  Problems out;
  if (!use.images_owned.empty()) {
    out.push_back({codes::kAccountInUse,
                   "account " + account_id + " owns " + std::to_string(use.images_owned.size()) +
                       " image(s) (" + FewOf(use.images_owned) + "); delete them first"});
  }
  if (!use.images_shared_with.empty()) {
    out.push_back({codes::kAccountInUse, "account " + account_id + " has " +
                                             std::to_string(use.images_shared_with.size()) +
                                             " image(s) shared with it (" +
                                             FewOf(use.images_shared_with) +
                                             "); their owners must unshare them first"});
  }
  if (!use.jobs_in_flight.empty()) {
    out.push_back({codes::kAccountInUse, "account " + account_id + " has copies in flight (job " +
                                             FewOf(use.jobs_in_flight) +
                                             "); wait for them or cancel them first"});
  }
  return out;
}

std::vector<std::string> Unique(const std::vector<std::string>& values) {
  std::vector<std::string> out;
  for (const auto& v : values) {
    if (std::ranges::find(out, v) == out.end()) out.push_back(v);
  }
  return out;
}

}  // namespace imagerelay
