"""A reference model of BCC's custom-image rules, for the stateful test (issue #16, point 2).

Written from the rules as documented, not from the engine: shared/reference/
baidu-bcc-image-api.md (BCC's own calls, codes and limits), DESIGN.md §2 (the rule list),
API.md (names, classes, codes) and, where those are silent, the repository's docs/errors.md
and docs/python-api.md (each such place is cited). It holds no bytes store and knows no
engine internals: images, shares, jobs and tasks as plain Python objects, and one method per
call that answers what the call must do: a result, or the codes of the rules it breaks.

Copies are modelled as the test drives them: a replicate leaves its copies in flight
(`Pending`) until `run_copies()` completes every one of them, so every answer is
deterministic (the test's engine runs no copy worker between those points).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

SYSTEM, CUSTOM, SHARING = "System", "Custom", "Sharing"
AVAILABLE, REPLICATING, DELETED = "Available", "Replicating", "Deleted"
PENDING, COMPLETED, CANCELLED = "Pending", "Completed", "Cancelled"

# API.md "Errors": the class of every code.
CODE_CLASS = {
    "InvalidParameter": "ValidationError",
    "PolicyViolation": "ValidationError",
    "Image.ImageNotSupportCopy": "ValidationError",
    "Image.LargeImageCopyForbidden": "ValidationError",
    "Image.LargeImageImportForbidden": "ValidationError",
    "Image.RegionNotSupportCopy": "ValidationError",
    "Image.DestRegionIsEmpty": "ValidationError",
    "Image.UnCustomImageCannotBeShared": "ValidationError",
    "Image.AccountListIsEmpty": "ValidationError",
    "Image.InvalidAccount": "ValidationError",
    "Image.CannotShareToOwner": "ValidationError",
    "Image.UnCustomImageCannotBeDeleted": "ValidationError",
    "NoSuchImage": "NotFoundError",
    "NoSuchRegion": "NotFoundError",
    "NoSuchAccount": "NotFoundError",
    "NoSuchJob": "NotFoundError",
    "AccessDenied": "PermissionDeniedError",
    "Image.ImageStatusForbidden": "ImageBusyError",
    "Image.CreatingImageCannotBeDeleted": "ImageBusyError",
    "Image.AccountHasBeenShared": "ConflictError",
    "Image.AccountNotShared": "ConflictError",
    "Image.ImageHasBeenSharedToOthers": "ConflictError",
    "IdempotentParameterMismatch": "ConflictError",
    "AlreadyExists": "ConflictError",
    "Image.ExceedSharedToUserNumQuota": "QuotaExceededError",
    "Image.ExceedAcceptSharedImageNumQuota": "QuotaExceededError",
}

# DESIGN.md §2 (and BCC's `imageName`: 1-65 characters, a letter first).
NAME_RULE = re.compile(r"[A-Za-z][A-Za-z0-9_./-]{0,64}")


def valid_name(name: str) -> bool:
    return NAME_RULE.fullmatch(name) is not None


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blocks_of(data: bytes, block_size: int) -> set[str]:
    """The stored blocks an image needs: the SHA-256 of each block that is not all zero
    (DESIGN.md §4: zero chunks are not stored, identical ones once per region)."""
    out = set()
    for i in range(0, len(data), block_size):
        block = data[i:i + block_size]
        if block.count(0) != len(block):
            out.add(hashlib.sha256(block).hexdigest())
    return out


# -- answers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rejected:
    """A call that must fail: `codes` are the rules it breaks, in the order they answer (the
    first one is the exception's `.code`, all of them are in `.problems`)."""

    codes: tuple[str, ...]

    @property
    def code(self) -> str:
        return self.codes[0]


@dataclass(frozen=True)
class Limits:
    max_copy_bytes: int
    max_import_bytes: int
    max_share_accounts: int
    max_accepted_shares: int


# -- state --------------------------------------------------------------------------------
@dataclass
class Image:
    id: str
    region: str
    name: str
    owner: str | None  # None: a System image
    data: bytes
    source_image_id: str | None = None
    source_region: str | None = None
    deleted: bool = False
    shares: set[str] = field(default_factory=set)

    @property
    def type(self) -> str:
        return SYSTEM if self.owner is None else CUSTOM


@dataclass
class Task:
    region: str
    dest_image_id: str
    state: str = PENDING

    @property
    def in_flight(self) -> bool:
        return self.state == PENDING


@dataclass
class Job:
    id: str
    account: str
    source_image_id: str
    source_region: str
    tasks: dict[str, Task]

    @property
    def state(self) -> str:
        """API.md "Job and Task" (docs/python-api.md `Job.state`)."""
        states = {t.state for t in self.tasks.values()}
        if PENDING in states:
            return "Running"
        if states == {COMPLETED}:
            return "Completed"
        if states == {CANCELLED}:
            return "Cancelled"
        return "PartiallyCompleted"  # completed and cancelled; no copy fails here


@dataclass(frozen=True)
class ImageView:
    """An image as one account sees it (the fields the test compares)."""

    id: str
    region: str
    name: str
    type: str
    owner: str | None
    status: str
    size: int
    source_image_id: str | None
    source_region: str | None


@dataclass(frozen=True)
class ReplicateArgs:
    """What makes two replicate requests "the same arguments" for a client token: the image,
    the destinations once duplicates are folded (DESIGN.md §2), and the name given."""

    image_id: str
    to: frozenset[str]
    name: str | None


class Model:
    def __init__(self, regions: Iterable[str], accounts: Iterable[str], limits: Limits,
                 block_size: int) -> None:
        self.regions = set(regions)
        self.accounts = set(accounts)
        self.limits = limits
        self.block_size = block_size
        self.images: dict[str, Image] = {}
        self.jobs: dict[str, Job] = {}
        self.tokens: dict[tuple[str, str], tuple[ReplicateArgs, str]] = {}

    # -- what an account sees ---------------------------------------------------------------
    def status(self, image: Image) -> str:
        """DESIGN.md §3: a copy is `Replicating` while its task is in flight; a source while
        any copy of it is in flight; else `Available` (no import or copy fails here)."""
        if image.deleted:
            return DELETED
        for job in self.jobs.values():
            for task in job.tasks.values():
                if task.in_flight and image.id in (task.dest_image_id, job.source_image_id):
                    return REPLICATING
        return AVAILABLE

    def visible(self, account: str, image_id: str) -> Image | None:
        """DESIGN.md §2 "Visibility": System images, the account's own, and those shared
        with it; anything else is `NoSuchImage`, never `AccessDenied`."""
        image = self.images.get(image_id)
        if image is None or image.deleted:
            return None
        if image.owner is None or image.owner == account or account in image.shares:
            return image
        return None

    def view(self, account: str, image: Image) -> ImageView:
        seen = (SYSTEM if image.owner is None else CUSTOM if image.owner == account
                else SHARING)
        return ImageView(image.id, image.region, image.name, seen, image.owner,
                         self.status(image), len(image.data), image.source_image_id,
                         image.source_region)

    def listing(self, account: str) -> dict[str, ImageView]:
        return {i.id: self.view(account, i) for i in self.images.values()
                if self.visible(account, i.id) is not None}

    def get(self, account: str, image_id: str) -> ImageView | Rejected:
        image = self.visible(account, image_id)
        return Rejected(("NoSuchImage",)) if image is None else self.view(account, image)

    def jobs_of(self, account: str) -> dict[str, Job]:
        return {j.id: j for j in self.jobs.values() if j.account == account}

    def in_flight(self) -> list[Task]:
        return [t for j in self.jobs.values() for t in j.tasks.values() if t.in_flight]

    def needed_blocks(self, region: str) -> set[str]:
        """The blocks a region must hold: those of every live image there. A copy in flight
        has written nothing yet (no worker runs while it is in flight)."""
        out: set[str] = set()
        for image in self.images.values():
            if image.region == region and not image.deleted and not self.copy_in_flight(image):
                out |= blocks_of(image.data, self.block_size)
        return out

    def copy_in_flight(self, image: Image) -> bool:
        return any(t.dest_image_id == image.id and t.in_flight for t in self.in_flight())

    # -- import (DESIGN.md §2 "Import"; order: docs/errors.md "import") --------------------
    def check_import(self, account: str, region: str, name: str, size: int) -> Rejected | None:
        codes = []
        if region not in self.regions:
            codes.append("NoSuchRegion")
        if not valid_name(name):
            codes.append("InvalidParameter")
        # Reference §7: "Image vsize must be 500 GB or less" (at most the limit).
        if size > self.limits.max_import_bytes:
            codes.append("Image.LargeImageImportForbidden")
        return Rejected(tuple(codes)) if codes else None

    def add_image(self, image_id: str, region: str, name: str, owner: str | None,
                  data: bytes) -> None:
        self.images[image_id] = Image(image_id, region, name, owner, data)

    # -- replicate (DESIGN.md §2 "Replicate", reference §2 "Copy") -------------------------
    def check_replicate(self, account: str, image_id: str, to: list[str], name: str | None,
                        token: str | None) -> Rejected | str | None:
        """None: a new job; a job id: the client token's first job (nothing starts)."""
        if token is not None and (account, token) in self.tokens:
            # The client token answers first, before the rules: a retry of a request whose
            # answer was lost arrives while its copies are in flight (the source is then
            # `Replicating`) or after they ended, and must get the first job back, not a
            # rule's error (docs/errors.md `IdempotentParameterMismatch`, corrected after
            # the model found the order written there). Tokens are the caller's own, as
            # BCC's `clientToken`: another account's token is no token.
            first_args, job_id = self.tokens[(account, token)]
            if first_args != ReplicateArgs(image_id, frozenset(to), name):
                return Rejected(("IdempotentParameterMismatch",))
            return job_id
        image = self.visible(account, image_id)
        if image is None:
            return Rejected(("NoSuchImage",))
        codes = self._owner_rules(account, image, "Image.ImageNotSupportCopy")
        if len(image.data) > self.limits.max_copy_bytes:
            codes.append("Image.LargeImageCopyForbidden")
        if not to:
            codes.append("Image.DestRegionIsEmpty")
        elif any(r not in self.regions or r == image.region for r in to):
            codes.append("Image.RegionNotSupportCopy")
        if name is not None and not valid_name(name):
            codes.append("InvalidParameter")
        if codes:
            return Rejected(tuple(_in_order(codes, REPLICATE_ORDER)))
        return None

    def add_job(self, account: str, job_id: str, image_id: str, to: list[str],
                name: str | None, token: str | None, dest_ids: dict[str, str]) -> None:
        source = self.images[image_id]
        assert set(dest_ids) == set(to), (dest_ids, to)
        tasks = {}
        for region, dest_id in dest_ids.items():
            copy = Image(dest_id, region, name if name is not None else source.name,
                         source.owner, source.data, source_image_id=source.id,
                         source_region=source.region)
            self.images[dest_id] = copy
            tasks[region] = Task(region, dest_id)
        self.jobs[job_id] = Job(job_id, account, source.id, source.region, tasks)
        if token is not None:
            self.tokens[(account, token)] = (ReplicateArgs(image_id, frozenset(to), name), job_id)

    def run_copies(self) -> None:
        """Every copy in flight completes; its image becomes `Available` (copies never
        inherit shares: the copy's share set starts empty)."""
        for task in self.in_flight():
            task.state = COMPLETED

    # -- cancel (reference §1: by the destination image id, only while `dest_copying`) ------
    def check_cancel_copy(self, account: str, dest_id: str) -> Rejected | Task:
        image = self.visible(account, dest_id)
        if image is None:
            return Rejected(("NoSuchImage",))
        if image.owner is None:
            # The reference is silent; docs/errors.md: it is no copy in flight.
            return Rejected(("Image.ImageStatusForbidden",))
        if image.owner != account:
            return Rejected(("AccessDenied",))  # docs/errors.md AccessDenied: cancel
        for task in self.in_flight():
            if task.dest_image_id == dest_id:
                return task
        return Rejected(("Image.ImageStatusForbidden",))

    def check_cancel_job(self, account: str, job_id: str,
                         region: str | None) -> Rejected | list[Task]:
        """docs/python-api.md `Job.cancel(region=None)`: every copy in flight, or the one to
        `region`; `Image.ImageStatusForbidden` if none is in flight."""
        job = self.jobs.get(job_id)
        if job is None or job.account != account:
            return Rejected(("NoSuchJob",))
        tasks = [t for t in job.tasks.values()
                 if t.in_flight and (region is None or t.region == region)]
        return tasks if tasks else Rejected(("Image.ImageStatusForbidden",))

    def cancel(self, tasks: Iterable[Task]) -> None:
        """The copy leaves every listing; the source is `Available` again once no copy of
        it is in flight (status() derives it)."""
        for task in tasks:
            task.state = CANCELLED
            self.images[task.dest_image_id].deleted = True

    # -- share / unshare (DESIGN.md §2, reference §2 "Share" and §7) -----------------------
    def _owner_rules(self, account: str, image: Image, type_code: str) -> list[str]:
        """The rules replicate, share, unshare and delete share: the owner's own `Custom`
        image, `Available` (not `Replicating`: DESIGN.md §2)."""
        codes = []
        if image.owner is None:
            # DESIGN.md §2: for a System image the type rule answers, never AccessDenied.
            codes.append(type_code)
        elif image.owner != account:
            # Reference §7: a custom image "can only be used, shared, replicated and deleted
            # by the creator"; a recipient may not do any of it.
            codes.append("AccessDenied")
        if self.status(image) != AVAILABLE:
            codes.append("Image.ImageStatusForbidden")
        return codes

    def check_share(self, account: str, image_id: str,
                    accounts: list[str]) -> Rejected | list[str]:
        """The accounts to add (duplicates folded: reference §1, "the server removes
        duplicates")."""
        image = self.visible(account, image_id)
        if image is None:
            return Rejected(("NoSuchImage",))
        codes = self._owner_rules(account, image, "Image.UnCustomImageCannotBeShared")
        wanted = list(dict.fromkeys(accounts))
        if not wanted:
            codes.append("Image.AccountListIsEmpty")
        per_account, new = [], []
        for a in wanted:
            if a not in self.accounts:
                per_account.append("Image.InvalidAccount")
            elif a == image.owner:
                per_account.append("Image.CannotShareToOwner")
            elif a in image.shares:
                per_account.append("Image.AccountHasBeenShared")
            else:
                new.append(a)
        if len(image.shares) + len(new) > self.limits.max_share_accounts:
            per_account.append("Image.ExceedSharedToUserNumQuota")
        for a in new:
            # Reference §7: a recipient holds at most 20 shared images (per region: the
            # console's quota is regional, DESIGN.md §2).
            held = sum(1 for i in self.images.values()
                       if not i.deleted and i.region == image.region and a in i.shares)
            if held + 1 > self.limits.max_accepted_shares:
                per_account.append("Image.ExceedAcceptSharedImageNumQuota")
        codes = _in_order(codes, SHARE_ORDER) + per_account
        return Rejected(tuple(dict.fromkeys(codes))) if codes else new

    def check_unshare(self, account: str, image_id: str,
                      accounts: list[str]) -> Rejected | list[str]:
        image = self.visible(account, image_id)
        if image is None:
            return Rejected(("NoSuchImage",))
        codes = self._owner_rules(account, image, "Image.UnCustomImageCannotBeShared")
        wanted = list(dict.fromkeys(accounts))
        if not wanted:
            codes.append("Image.AccountListIsEmpty")
        per_account = []
        for a in wanted:
            if a not in self.accounts:
                per_account.append("Image.InvalidAccount")
            elif a not in image.shares:
                per_account.append("Image.AccountNotShared")
        codes = _in_order(codes, UNSHARE_ORDER) + per_account
        return Rejected(tuple(dict.fromkeys(codes))) if codes else wanted

    def shared_users(self, account: str, image_id: str) -> Rejected | list[str]:
        image = self.visible(account, image_id)
        if image is None:
            return Rejected(("NoSuchImage",))
        if image.owner is None:
            # Owner only, and no account owns it (docs/errors.md: AccessDenied).
            return Rejected(("AccessDenied",))
        if image.owner != account:
            return Rejected(("AccessDenied",))  # API.md: owner only
        return sorted(image.shares)

    # -- rename (reference §1 "Rename"; docs/python-api.md `rename_image`) -----------------
    def check_rename(self, account: str, image_id: str, name: str) -> Rejected | None:
        image = self.visible(account, image_id)
        if image is None:
            return Rejected(("NoSuchImage",))
        codes = []
        if image.owner != account:
            # A System image too: no account owns it (docs/errors.md: AccessDenied).
            codes.append("AccessDenied")
        if self.status(image) != AVAILABLE:
            codes.append("Image.ImageStatusForbidden")
        if not valid_name(name):
            codes.append("InvalidParameter")
        return Rejected(tuple(codes)) if codes else None

    # -- delete (DESIGN.md §2 "Delete", reference §2 "Delete") ------------------------------
    def check_delete(self, account: str, image_id: str) -> Rejected | None:
        image = self.visible(account, image_id)
        if image is None:
            return Rejected(("NoSuchImage",))
        codes = self._owner_rules(account, image, "Image.UnCustomImageCannotBeDeleted")
        if image.shares:
            # Reference §7: "An image cannot be deleted until every share is cancelled".
            codes.append("Image.ImageHasBeenSharedToOthers")
        return Rejected(tuple(_in_order(codes, DELETE_ORDER))) if codes else None

    # -- reads ----------------------------------------------------------------------------
    def check_read(self, account: str, image_id: str) -> Rejected | bytes:
        """verify_image and export_image: by anyone who sees the image (a recipient "may
        inspect and export it", DESIGN.md §2). Only an image whose bytes are all there: not a
        copy in flight (docs/errors.md `Image.ImageStatusForbidden`); a source whose copies
        are in flight is `Replicating` but whole, and "reads still work" (DESIGN.md §2)."""
        image = self.visible(account, image_id)
        if image is None:
            return Rejected(("NoSuchImage",))
        if self.copy_in_flight(image):
            return Rejected(("Image.ImageStatusForbidden",))
        return image.data


def _in_order(codes: list[str], order: list[str]) -> list[str]:
    """Distinct codes in rule order."""
    return sorted(set(codes), key=order.index)


# docs/errors.md "Validation: every rule at once": the order of each request's rules. The
# rules about the accounts of a share or unshare come after the others, "checked account by
# account" (errors.md): the first account's first broken rule answers, whatever the order of
# the list below.
REPLICATE_ORDER = ["AccessDenied", "Image.ImageNotSupportCopy",
                   "Image.LargeImageCopyForbidden", "Image.ImageStatusForbidden",
                   "Image.DestRegionIsEmpty", "Image.RegionNotSupportCopy", "InvalidParameter"]
SHARE_ORDER = ["AccessDenied", "Image.UnCustomImageCannotBeShared",
               "Image.ImageStatusForbidden", "Image.AccountListIsEmpty", "Image.InvalidAccount",
               "Image.CannotShareToOwner", "Image.AccountHasBeenShared",
               "Image.ExceedSharedToUserNumQuota", "Image.ExceedAcceptSharedImageNumQuota"]
UNSHARE_ORDER = ["AccessDenied", "Image.UnCustomImageCannotBeShared",
                 "Image.ImageStatusForbidden", "Image.AccountListIsEmpty",
                 "Image.InvalidAccount", "Image.AccountNotShared"]
DELETE_ORDER = ["AccessDenied", "Image.UnCustomImageCannotBeDeleted",
                "Image.ImageStatusForbidden", "Image.ImageHasBeenSharedToOthers"]
