"""Cloud: the engine as one acting account sees it (API.md "Cloud")."""

from __future__ import annotations

import atexit
import fnmatch
import logging
import os
import re
import threading
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from . import _core
from ._checks import as_str_list, check_int, check_text, check_timeout
from ._config import home_config
from ._progress import bar_callback
from ._types import Account, Event, Handle, Limits, Region
from ._wait import wait_for
from .access_keys import AccessKey, AccessKeyFiles
from .collections import ImageList, JobList
from .dry_run import DryRun
from .errors import ValidationError
from .image import Image
from .job import Job
from .scrub import ScrubReport

log = logging.getLogger("imagerelay")

_MAX_WORKERS = 1024  # copy threads of one engine
_GLOB = re.compile(r"[*?\[]")  # what makes images(name=...) a pattern

_open_engines: weakref.WeakSet[_core.Engine] = weakref.WeakSet()
_open_lock = threading.Lock()


@atexit.register
def _close_all() -> None:
    # Stop the workers while the interpreter is alive: copies in flight resume next time.
    with _open_lock:
        engines = list(_open_engines)
    for engine in engines:
        engine.close()


class PolicyRequest:
    """What a policy (``add_rule``) sees of a request."""

    def __init__(self, cloud: Cloud, info: _core.PolicyRequestInfo) -> None:
        self.action: str = info.action
        self.account: str = info.account
        self.image: Image | None = Image(cloud, info.image) if info.image is not None else None
        self.to: list[str] = list(info.to)
        self.accounts: list[str] = list(info.accounts)
        self.name: str = info.name

    def __repr__(self) -> str:
        return (f"<PolicyRequest {self.action} by {self.account} "
                f"image={self.image.id if self.image else None}>")


class Cloud:
    """The engine, acting as one account. A context manager: ``close()`` stops its workers."""

    def __init__(self, engine: _core.Engine, account: str, *, owns_engine: bool = True) -> None:
        self._engine = engine
        self._account = account
        self._owns_engine = owns_engine
        self._catalog_uri = ""  # as given to open(), password included: never shown

    # -- basics -------------------------------------------------------------------
    @property
    def account(self) -> str:
        """The acting account id."""
        return self._account

    @property
    def home(self) -> Path:
        return Path(self._engine.home)

    @property
    def limits(self) -> Limits:
        core = self._engine.limits
        return Limits(max_copy_bytes=core.max_copy_bytes, max_import_bytes=core.max_import_bytes,
                      max_share_accounts=core.max_share_accounts,
                      max_accepted_shares=core.max_accepted_shares, chunk_size=core.chunk_size,
                      max_tasks_per_region=core.max_tasks_per_region,
                      buffer_memory=core.buffer_memory, bandwidth=core.bandwidth or None)

    def as_account(self, account_id: str) -> Cloud:
        """The same engine acting as another account (``NoSuchAccount`` if unknown)."""
        self._engine.account(account_id)
        other = Cloud(self._engine, account_id, owns_engine=False)
        other._catalog_uri = self._catalog_uri
        return other

    def close(self) -> None:
        """Stops this engine's workers; copies in flight resume at the next open()."""
        if self._owns_engine:
            self._engine.close()

    def __enter__(self) -> Cloud:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def catalog(self) -> str:
        """Where the catalog is: ``<home>/catalog.db``, or a PostgreSQL URI with its password
        shown as ``***``."""
        return str(self._engine.catalog)

    def __repr__(self) -> str:
        catalog = self.catalog
        where = "" if catalog == str(self.home / "catalog.db") else f" catalog={catalog!r}"
        return f"<Cloud home={str(self.home)!r}{where} account={self.account!r}>"

    # -- regions and accounts -----------------------------------------------------
    def add_region(self, region_id: str, store: str | os.PathLike[str] | None = None, *,
                   name: str | None = None, access_key_id: str | None = None,
                   secret_access_key: str | None = None,
                   session_token: str | None = None) -> Region:
        """Adds a region; ``store`` is a path or file:// / s3:// URI (None: under the home).

        For an S3 region (``s3://bucket/prefix?endpoint=https://host:port&region=us-east-1``),
        the credentials are kept in ``<home>/credentials/<region_id>.json`` (mode 0600), never
        in the catalog or the region's listing; without them the engine uses
        ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``.
        """
        # Each checked here: a type the binding refuses would have it show every argument.
        uri = check_text("store", None if store is None else os.fspath(store), secret=True)
        return Region._from_core(self._engine.add_region(
            check_text("region_id", region_id), uri, check_text("name", name),
            access_key_id=check_text("access_key_id", access_key_id),
            secret_access_key=check_text("secret_access_key", secret_access_key, secret=True),
            session_token=check_text("session_token", session_token, secret=True)))

    @property
    def regions(self) -> list[Region]:
        return [Region._from_core(r) for r in self._engine.regions()]

    def region(self, region_id: str) -> Region:
        return Region._from_core(self._engine.region(region_id))

    def remove_region(self, region_id: str) -> None:
        """Removes a region, and the credentials kept with it; its store's files stay.

        Refused (``ConflictError``, ``Region.InUse``) while the region holds an image that is
        not deleted (CreateFailed ones included) or a copy to or from it is in flight.
        """
        self._engine.remove_region(self.account, region_id)

    def move_region(self, region_id: str, store: str | os.PathLike[str]) -> Region:
        """Points a region at another store: a copy of its store (a bigger disk), or, in a
        home copied with ``cp -r``, a copy of a store the original home keeps using.

        The new place must already hold the manifest of every image of the region that is
        not damaged (as committed) and the blocks they name; a region without images may take
        a new, empty place. It
        may not be another home's store nor meet another region's (``InvalidParameter``).
        Refused (``ConflictError``, ``Region.InUse``) while imports into the region or
        copies to or from it are in flight. Blocks are not read: ``scrub(region_id)`` checks
        them. The old store's files stay; it is released for another home to take.
        """
        uri = check_text("store", os.fspath(store), secret=True)
        return Region._from_core(self._engine.move_region(
            self.account, check_text("region_id", region_id), uri))

    def add_account(self, account_id: str, *, name: str | None = None) -> Account:
        return Account._from_core(self._engine.add_account(account_id, name or ""))

    def remove_account(self, account_id: str) -> None:
        """Removes an account. Refused (``ConflictError``, ``Account.InUse``) while it owns
        an image that is not deleted, has images shared with it, or has copies in flight."""
        self._engine.remove_account(self.account, account_id)
        AccessKeyFiles(self.home).delete_all(account_id)

    @property
    def accounts(self) -> list[Account]:
        return [Account._from_core(a) for a in self._engine.accounts()]

    # -- access keys (imagerelay serve) -------------------------------------------
    def create_access_key(self, account: str) -> AccessKey:
        """A new access key for ``account`` (``NoSuchAccount`` if unknown), with which it
        signs requests to ``imagerelay serve``. Its ``secret_access_key`` is given only here:
        it is kept in ``<home>/access-keys/`` (mode 0600), never shown again."""
        self._engine.account(account)
        return AccessKeyFiles(self.home).create(account)

    def access_keys(self, account: str) -> list[AccessKey]:
        """The account's access keys, oldest first, without their secrets."""
        self._engine.account(account)
        return AccessKeyFiles(self.home).list(account)

    def delete_access_key(self, account: str, key_id: str) -> None:
        """Deletes one of the account's keys: requests signed with it are refused from
        then on (``InvalidParameter`` if the account has no such key)."""
        self._engine.account(account)
        AccessKeyFiles(self.home).delete(account, key_id)

    @property
    def dry_run(self) -> DryRun:
        """Every check of a request and nothing else (``cloud.dry_run.replicate(...)``)."""
        return DryRun(self)

    # -- images -------------------------------------------------------------------
    def _import(self, source: str | os.PathLike[str], system: bool, *, region: str, name: str,
                os_type: str, os_name: str, os_version: str, os_arch: str, format: str | None,
                description: str, wait: bool, progress: bool,
                validate_only: bool = False) -> Image:
        request = _core.ImportRequest()
        request.source = os.fspath(source)
        request.region = region
        request.name = name
        request.os_type = os_type
        request.os_name = os_name
        request.os_version = os_version
        request.os_arch = os_arch
        request.format = format or ""
        request.description = description
        request.validate_only = validate_only
        with bar_callback(f"import {name} -> {region}", progress and wait) as report:
            info = self._engine.import_image("" if system else self.account, request, wait,
                                             system, report)
        return Image(self, info)

    def import_image(self, source: str | os.PathLike[str], *, region: str, name: str,
                     os_type: str = "linux", os_name: str = "", os_version: str = "",
                     os_arch: str = "x86_64", format: str | None = None, description: str = "",
                     wait: bool = True, progress: bool = False) -> Image:
        """Imports a file as a Custom image; ``wait=False`` returns at once in Creating.

        The format (raw, qcow2, vmdk, vhd) and the disk's virtual size are read from the
        file's header; a ``format`` given must be what the header says.

        ``progress=True`` shows a progress bar while it waits (tqdm: terminal and Jupyter).
        Ctrl-C stops the import: the image ends CreateFailed and keeps no bytes.
        """
        return self._import(source, False, region=region, name=name, os_type=os_type,
                            os_name=os_name, os_version=os_version, os_arch=os_arch,
                            format=format, description=description, wait=wait,
                            progress=progress)

    def add_system_image(self, source: str | os.PathLike[str], *, region: str, name: str,
                         os_type: str = "linux", os_name: str = "", os_version: str = "",
                         os_arch: str = "x86_64", format: str | None = None, description: str = "",
                         wait: bool = True, progress: bool = False) -> Image:
        """Adds a System image: no owner, seen by every account."""
        return self._import(source, True, region=region, name=name, os_type=os_type,
                            os_name=os_name, os_version=os_version, os_arch=os_arch,
                            format=format, description=description, wait=wait,
                            progress=progress)

    def images(self, region: str | None = None, *, image_type: str = "All",
               name: str | None = None) -> ImageList:
        """Images the acting account sees: System, its own, and those shared with it.

        ``name``: an exact name, or a glob pattern (``golden-*``, ``v?``, ``[ab]*``; case
        sensitive, as ``fnmatch.fnmatchcase``). Image names hold none of ``*?[``.
        """
        pattern = name if name is not None and _GLOB.search(name) else None
        infos = self._engine.images(self.account, region, image_type,
                                    None if pattern is not None else name)
        return ImageList(Image(self, i) for i in infos
                         if pattern is None or fnmatch.fnmatchcase(i.name, pattern))

    def image(self, image_id: str) -> Image:
        """One image; ``NoSuchImage`` if unknown or not visible."""
        return Image(self, self._engine.image(self.account, image_id))

    def share(self, image_id: str, accounts: str | list[str]) -> None:
        self._engine.share(self.account, image_id, as_str_list(accounts, "accounts"))

    def unshare(self, image_id: str, accounts: str | list[str]) -> None:
        self._engine.unshare(self.account, image_id, as_str_list(accounts, "accounts"))

    def shared_users(self, image_id: str) -> list[str]:
        """Accounts the image is shared with (owner only)."""
        return list(self._engine.shared_users(self.account, image_id))

    def rename_image(self, image_id: str, name: str) -> None:
        self._engine.rename(self.account, image_id, name)

    def delete_image(self, image_id: str) -> None:
        self._engine.delete(self.account, image_id)

    def export_image(self, image_id: str, path: str | os.PathLike[str], *,
                     progress: bool = False, force: bool = False) -> Path:
        """Writes the image's bytes to ``path`` (sparse where chunks are zero).

        ``path`` must not exist, unless ``force=True``: then an existing regular file is
        replaced and keeps its mode (and owner, as root). A symbolic link, device node, FIFO,
        socket or directory is never written (``ValidationError``, ``InvalidParameter``).
        ``progress=True`` shows a progress bar (tqdm: terminal and Jupyter). Ctrl-C stops
        the export and leaves ``path`` as it was.
        """
        target = Path(path)
        with bar_callback(f"export {image_id} -> {target.name}", progress) as report:
            self._engine.export(self.account, image_id, target, report, force=force)
        return target

    def verify_image(self, image_id: str, *, progress: bool = False) -> str:
        """Re-reads the image's chunks, checks each and the whole; returns the digest.

        Raises ``IntegrityError`` (``Transfer.IntegrityError``) if any byte is wrong.
        ``progress=True`` shows a progress bar.
        """
        with bar_callback(f"verify {image_id}", progress) as report:
            return str(self._engine.verify(self.account, image_id, report))

    def scrub(self, region: str | None = None, *, progress: bool = False) -> list[ScrubReport]:
        """Reads every stored chunk of ``region`` (all regions if None) and heals damage.

        Chunks whose bytes do not match their name are quarantined; images that need a
        damaged or missing chunk become ``NotAvailable`` and are repaired from any region
        that holds the same bytes (verified on arrival), then ``Available`` again once they
        verify whole. Returns one report per region.
        """
        with bar_callback(f"scrub {region or 'all regions'}", progress) as report:
            return [ScrubReport._from_core(r)
                    for r in self._engine.scrub(self.account, region, report)]

    # -- replication --------------------------------------------------------------
    def replicate(self, image_id: str, to: str | list[str], *, name: str | None = None,
                  client_token: str | None = None) -> Job:
        """Copies a Custom image to other regions; returns the job at once."""
        info = self._engine.replicate(self.account, image_id, as_str_list(to, "to"), name,
                                      client_token)
        return Job(self, info)

    def cancel_copy(self, dest_image_id: str) -> None:
        """Cancels the copy that creates ``dest_image_id`` (BCC's cancelRemoteCopy)."""
        self._engine.cancel_copy(self.account, dest_image_id)

    def job(self, job_id: str) -> Job:
        return Job(self, self._engine.job(self.account, job_id))

    def jobs(self, *, active: bool | None = None) -> JobList:
        """The acting account's jobs, newest first."""
        return JobList(Job(self, j) for j in self._engine.jobs(self.account, active))

    def wait_digest(self, image_id: str, timeout: float | None = None, *,
                    progress: bool = False) -> str:
        """The image's digest, waiting while it is computed.

        An image imported from a mostly-empty file (holes larger than its data and than
        1 GiB) is Available as soon as its data is stored; its `digest` is None until the
        background digester has hashed the whole image. Raises TimeoutError after `timeout`.
        ``progress=True`` shows how far the digester got (bytes hashed of the image's size).
        """
        seconds = check_timeout(timeout)
        with bar_callback(f"digest {image_id}", progress) as report:
            return wait_for(
                lambda: str(self._engine.wait_digest(self.account, image_id, seconds, report)),
                lambda: f"the digest of image {image_id} is still being computed after "
                        f"{timeout} s")

    def copies_waiting_for_a_worker(self) -> list[str]:
        """The copies (destination image ids) that no live worker runs: their worker
        stopped (killed, or its machine went away), or they are queued while no worker runs.
        The next ``open()`` of the home with workers, ``imagerelay worker``, or any
        ``imagerelay`` command (which starts a background worker for them) resumes them."""
        return list(self._engine.copies_waiting_for_a_worker())

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once no task is Pending or Running (and the copies that just ended have
        removed what a failed or cancelled one left); False if ``timeout`` passed first."""
        return self._engine.wait_idle(check_timeout(timeout))

    # -- events and policies ------------------------------------------------------
    def events(self, *, since: int | datetime | timedelta = 0,
               image_id: str | None = None) -> list[Event]:
        """The audit log as this account may see it: what it did, and what happened to
        images it can see (images shared with it: from the moment of the share).

        ``since``: an event's ``seq`` (the events after it), an aware ``datetime`` (the
        events from then on; a naive one is UTC) or a ``timedelta`` (the events of that long
        before now).
        """
        seq, time_us = _since(since)
        return [Event._from_core(e)
                for e in self._engine.events(self._account, seq, image_id, time_us)]

    def wait_events(self, *, since: int = 0, image_id: str | None = None,
                    timeout: float | None = None) -> list[Event]:
        """The events after ``since`` (a ``seq``) as :meth:`events` gives them, waiting until
        there is at least one; ``[]`` when ``timeout`` seconds pass first."""
        since = check_int("since", since)
        return [Event._from_core(e) for e in self._engine.wait_events(
            self._account, since, image_id, check_timeout(timeout))]

    def on(self, event_type: str, callback: Callable[[Event], Any]) -> Handle:
        """Calls ``callback(event)`` on a worker thread for each event (``"*"``: all) that
        this account may see (as :meth:`events`)."""

        def deliver(info: _core.EventInfo) -> None:
            try:
                callback(Event._from_core(info))
            except Exception:  # a callback never stops the engine
                log.exception("imagerelay: callback for %s failed", info.type)

        handle = self._engine.add_listener(self._account, event_type, deliver)
        return Handle(lambda: self._engine.remove_listener(handle))

    def add_rule(self, fn: Callable[[PolicyRequest], str | bool | None]) -> Handle:
        """A policy run before every replicate/share/unshare/rename/delete/import.

        Returning a string rejects the call with ``ValidationError`` code ``PolicyViolation``.
        """
        name = getattr(fn, "__name__", "policy")

        def check(info: _core.PolicyRequestInfo) -> str | None:
            try:
                verdict = fn(PolicyRequest(self, info))
            except Exception as exc:
                log.exception("imagerelay: policy %s raised", name)
                return f"policy {name} failed: {type(exc).__name__}: {exc}"
            return None if verdict is None or verdict is True else str(verdict)

        handle = self._engine.add_policy(check)
        return Handle(lambda: self._engine.remove_policy(handle))


def _since(since: int | datetime | timedelta) -> tuple[int, int]:
    """(seq, time in microseconds since the epoch) of an ``events(since=...)``."""
    if isinstance(since, timedelta):
        since = datetime.now(timezone.utc) - since
    if isinstance(since, datetime):
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        return 0, max(0, int(since.timestamp() * 1_000_000))
    return check_int("since", since), 0


def _lease_ms() -> int:
    """$IMAGERELAY_LEASE_MS as a lease period, 0 when unset (the engine's 10 s)."""
    text = os.environ.get("IMAGERELAY_LEASE_MS", "").strip()
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 500 <= value <= 3_600_000:
        raise ValidationError(f"$IMAGERELAY_LEASE_MS must be milliseconds between 500 and "
                              f"3600000, got {text!r}")
    return value


def open(home: str | os.PathLike[str] | None = None, *, account: str | None = None,
         limits: Limits | None = None, workers: int | None = None,
         start_workers: bool = True, catalog: str | None = None,
         worker_regions: str | list[str] | tuple[str, ...] | None = None) -> Cloud:
    """Opens (or creates) a home: a catalog, regions bj/gz/su and account ``default``.

    ``home`` defaults to ``$IMAGERELAY_HOME``, else ``~/.imagerelay``; ``account`` to
    ``$IMAGERELAY_ACCOUNT``, else ``default``. Copies left in flight resume here, unless
    ``start_workers`` is false (a short-lived tool that leaves copies to a worker).
    ``catalog`` is where the catalog is: a ``postgresql://`` URI shared by several hosts
    (docs/scale-out.md); it defaults to ``$IMAGERELAY_CATALOG``, else the home's
    ``config.json``, else SQLite in ``<home>/catalog.db``. ``worker_regions`` are the
    regions this host reaches: its workers then take only copies whose source and
    destination are both among them, and leave the others queued for a host that reaches
    them (default: the home's ``config.json`` ``worker_regions``, else every region).
    ``$IMAGERELAY_LEASE_MS`` sets how long a copy's lease
    lasts without renewal (default 10000: a stopped host's copies move on after that).
    """
    if home is None:
        home = os.environ.get("IMAGERELAY_HOME") or Path.home() / ".imagerelay"
    if account is None:
        account = os.environ.get("IMAGERELAY_ACCOUNT") or "default"
    if workers is not None:
        workers = check_int("workers", workers, low=1, high=_MAX_WORKERS)
    home = Path(home).expanduser()
    if catalog is None:
        catalog = os.environ.get("IMAGERELAY_CATALOG") or None
    elif not isinstance(catalog, str):
        raise ValidationError(f"catalog must be a postgresql:// URI (a str), got "
                              f"{type(catalog).__name__}")
    if catalog is None or worker_regions is None:
        config = home_config(home)  # read once, for what the arguments leave open
        if catalog is None:
            catalog = config.get("catalog") or ""
        if worker_regions is None:
            worker_regions = config.get("worker_regions")  # this host's reach
    regions = as_str_list(worker_regions, "worker_regions")
    if worker_regions is not None and not regions:
        raise ValidationError("worker_regions must name at least one region (None: every "
                              "region)")
    lease_ms = _lease_ms()
    core_limits = (limits or Limits())._to_core()
    engine = _core.Engine.open(home, core_limits, workers or 4, start_workers, catalog,
                               regions, lease_ms)
    with _open_lock:
        _open_engines.add(engine)
    try:
        engine.account(account)
    except Exception:
        engine.close()
        raise
    cloud = Cloud(engine, account)
    cloud._catalog_uri = catalog  # for the background worker this opens; never shown
    return cloud
