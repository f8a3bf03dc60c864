// Who holds a piece of work and until when: an import, a copy task, a region's sweep. The
// holder ("<host>:<pid>:<nonce>", a worker id) renews its lease while it works; a lease past
// its time, or held by a process of this host that is gone, is free for another to take.
// Task and sweep leases are catalog columns; an import's lease is a setting, kept as text
// (ImportLease and PutImportLease are the only ones to read and write it).
#pragma once

#include <string>
#include <string_view>

#include "imagerelay/catalog.hpp"
#include "imagerelay/model.hpp"

namespace imagerelay {

struct Lease {
  std::string owner;  // "" = nobody
  TimeUs expires_us = 0;

  // "owner|expiry": an import's lease in the catalog's settings.
  std::string Encode() const;
  // Anything garbled is nobody's lease.
  static Lease Decode(std::string_view text);
};

// An import's key: of its lease in the catalog's settings and of its cancel token among the
// work running in this process (RunningWork).
std::string ImportKey(std::string_view image_id);
// The lease of the import into `image_id` (nobody's if it has none or it ended).
Lease ImportLease(CatalogTx& tx, std::string_view image_id);
// Sets it; an empty Lease{} ends it.
void PutImportLease(CatalogTx& tx, std::string_view image_id, const Lease& lease);
// Whether `key` (of RunningWork) is an import's.
bool IsImportKey(std::string_view key);

// Whether the lease's holder may still be working, as this process (`self`, a worker id on
// `host`) can tell.
bool LeaseHolderAlive(const Lease& lease, TimeUs now, std::string_view host, std::string_view self);

}  // namespace imagerelay
