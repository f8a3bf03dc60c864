"""The ``imagerelay`` command line (API.md "Command line"): its arguments and which call
each command makes. What it prints is made in ``_cli_output``; the background worker that
goes on with queued copies is ``_worker``; where an S3 region's credentials come from is
``_cli_credentials``."""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from . import __version__
from . import _cli_output as output
from . import cloud as cloud_module
from ._cli_credentials import region_credentials
from ._cli_output import Output
from ._progress import lines_without_terminal
from ._worker import ensure_background_worker, run_worker
from ._types import Event
from .collections import human_size
from .errors import ImageRelayError
from .job import Job

WAITING_COMMANDS = {"worker", "demo", "serve"}


def _split(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(x for x in v.split(",") if x)
    return out


def _playbook_var(text: str) -> tuple[str, str]:
    from .playbook import parse_var

    try:
        return parse_var(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _since(text: str) -> int | datetime | timedelta:
    """``events --since``: an event number, a duration before now (``90s``, ``15m``,
    ``1h30m``, ``2d``) or an ISO time (``2026-01-31T08:00``; UTC unless it has an offset)."""
    if re.fullmatch(r"-?\d+", text):  # out of range: the engine's own error says so
        return int(text)
    if _DURATION_PART.sub("", text) == "" and text:
        delta = timedelta()
        for number, unit in _DURATION_PART.findall(text):
            delta += timedelta(**{_UNIT[unit]: int(number)})
        return delta
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an event number (42), a duration (30s, 15m, 1h, 2d) or an ISO "
            "time (2026-01-31T08:00, UTC unless it has an offset)") from None


def _global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """--home, --account, --catalog and --json: before the subcommand, and after it too.
    After it, an option not given leaves the value given before (argparse.SUPPRESS)."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {}
    parser.add_argument("--home", help="home directory (default $IMAGERELAY_HOME, else "
                                       "~/.imagerelay; created if new)", **default)
    parser.add_argument("--account", help="acting account (default $IMAGERELAY_ACCOUNT, "
                                          "else default)", **default)
    parser.add_argument("--catalog", metavar="URI",
                        help="a postgresql:// catalog shared by several hosts (default "
                             "$IMAGERELAY_CATALOG, else the home's config.json, else the "
                             "home's own); the password from ~/.pgpass or $PGPASSWORD",
                        **default)
    parser.add_argument("--json", action="store_true",
                        help="machine-readable output on stdout (errors too)", **default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imagerelay",
        description="Replicate VM images between regions and share them between accounts.",
        epilog="example: imagerelay import golden.raw --region bj --name golden")
    _global_options(p, after_command=False)
    p.add_argument("--version", action="version", version=f"imagerelay {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def leaf(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
             help: str, example: str) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, help=help, description=help,
                                       epilog=f"example: {example}")
        _global_options(parser, after_command=True)
        return parser

    def add(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return leaf(sub, name, help, example)

    regions = add("regions", "list, add, move or remove regions", "imagerelay regions list")
    rsub = regions.add_subparsers(dest="action", required=True)
    leaf(rsub, "list", "list regions", "imagerelay regions list")
    radd = leaf(rsub, "add", "add a region",
                "imagerelay regions add hk s3://images/hk?endpoint=https://s3.example.com "
                "--access-key-id AKIA... --secret-access-key prompt")
    radd.add_argument("region_id", help="the new region's id: 2-32 characters, a lowercase "
                                        "letter, then lowercase letters, digits or '-'")
    radd.add_argument("store", nargs="?",
                      help="where its bytes live: a path, or a file:// or "
                           "s3://bucket/prefix?endpoint=... URI (default <home>/regions/ID)")
    radd.add_argument("--name", help="a name for people (default: the id)")
    radd.add_argument("--access-key-id", metavar="ID",
                      help="S3 region: the access key id to keep with the region "
                           "(`env`: $AWS_ACCESS_KEY_ID now)")
    radd.add_argument("--secret-access-key", metavar="SOURCE",
                      help="S3 region: where its secret key comes from, never the key itself: "
                           "`prompt` (asked, not echoed; the default with --access-key-id on a "
                           "terminal), `file:PATH` (the file's first line; `file:-`: stdin) or "
                           "`env` ($AWS_SECRET_ACCESS_KEY now)")
    radd.add_argument("--session-token", metavar="SOURCE",
                      help="S3 region: a session token, from `prompt`, `file:PATH` or `env` "
                           "($AWS_SESSION_TOKEN now)")
    radd.add_argument("--credentials-from-env", action="store_true",
                      help="S3 region: keep $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY (and "
                           "$AWS_SESSION_TOKEN) as they are now with the region, so that later "
                           "commands need no AWS_* variables")
    rrm = leaf(rsub, "remove", "remove a region that nothing uses (its store's files stay)",
               "imagerelay regions remove hk")
    rrm.add_argument("region_id", help="the region to remove")
    rmv = leaf(rsub, "move", "point a region at a copy of its store (a bigger disk, or a home "
                             "copied with `cp -r` whose regions' stores are outside it)",
               "imagerelay regions move hk /mnt/big/hk")
    rmv.add_argument("region_id", help="the region to move")
    rmv.add_argument("store", help="the new place: a path, or a file:// or s3:// URI, that holds "
                                   "a copy of the region's store (manifests/, packs/, index/)")

    accounts = add("accounts", "list, add or remove accounts", "imagerelay accounts add team-b")
    asub = accounts.add_subparsers(dest="action", required=True)
    leaf(asub, "list", "list accounts", "imagerelay accounts list")
    aadd = leaf(asub, "add", "add an account", "imagerelay accounts add team-b")
    aadd.add_argument("account_id", help="the new account's id: 1-64 characters, a letter or "
                                         "digit, then letters, digits, '_', '.', '@' or '-'")
    aadd.add_argument("--name", help="a name for people (default: the id)")
    arm = leaf(asub, "remove", "remove an account that owns nothing and has nothing shared "
                               "with it", "imagerelay accounts remove team-b")
    arm.add_argument("account_id", help="the account to remove")
    keys = leaf(asub, "keys", "create, list or delete an account's access keys (for "
                              "`imagerelay serve`)", "imagerelay accounts keys create team-b")
    ksub = keys.add_subparsers(dest="keys_action", required=True)
    kcreate = leaf(ksub, "create", "make a new access key; its secret is printed this once",
                   "imagerelay accounts keys create team-b --json")
    kcreate.add_argument("account_id", help="the account the key signs as")
    klist = leaf(ksub, "list", "the account's access key ids (never the secrets)",
                 "imagerelay accounts keys list team-b")
    klist.add_argument("account_id", help="the account whose keys to list")
    kdel = leaf(ksub, "delete", "delete an access key: requests signed with it are refused",
                "imagerelay accounts keys delete team-b 0123456789abcdef0123456789abcdef")
    kdel.add_argument("account_id", help="the account the key belongs to")
    kdel.add_argument("key_id", help="the access key id (32 hex digits)")

    images = add("images", "list or show images", "imagerelay images list --region gz")
    isub = images.add_subparsers(dest="action", required=True)
    ilist = leaf(isub, "list", "images the account sees", "imagerelay images list --name 'golden-*'")
    ilist.add_argument("--region", help="only the images of this region")
    ilist.add_argument("--type", default="All", choices=["All", "System", "Custom", "Sharing"],
                       help="only images of this type as the account sees them (default All)")
    ilist.add_argument("--name", help="only images of this name, or matching this glob pattern "
                                      "(golden-*, v?; quote it for the shell)")
    ishow = leaf(isub, "show", "one image", "imagerelay images show m-3k9x2q7a")
    ishow.add_argument("image", help="the image's id")

    imp = add("import", "import a file as a Custom image",
              "imagerelay import golden.raw --region bj --name golden --os-version 22.04")
    imp.add_argument("source", help="the image file, block device or URL to import")
    imp.add_argument("--region", required=True, help="the region to keep the image in")
    imp.add_argument("--name", required=True, help="the image's name: 1-65 characters, a "
                                                   "letter first, then letters, digits, -_./")
    imp.add_argument("--os-type", default="linux", help="the OS type (default linux)")
    imp.add_argument("--os-name", default="", help="the OS name, e.g. ubuntu")
    imp.add_argument("--os-version", default="", help="the OS version, e.g. 24.04")
    imp.add_argument("--os-arch", default="x86_64", help="the CPU architecture (default x86_64)")
    imp.add_argument("--format", choices=["raw", "qcow2", "vmdk", "vhd"],
                     help="what the file must be (default: what its header says)")
    imp.add_argument("--description", default="", help="a description, up to 1024 characters")

    rep = add("replicate", "copy an image to other regions",
              "imagerelay replicate m-3k9x2q7a --to gz,su --wait")
    rep.add_argument("image", help="the Custom image to copy")
    rep.add_argument("--to", required=True, action="append",
                     help="destination regions, comma-separated (repeatable)")
    rep.add_argument("--name", help="the copies' name (default: the source's)")
    rep.add_argument("--client-token", help="makes a retry safe: the same token with the same "
                                            "arguments returns the first job")
    rep.add_argument("--wait", action="store_true", help="wait for the copies, with progress")

    can = add("cancel", "cancel a copy in flight by its destination image",
              "imagerelay cancel m-7f2k1c9z")
    can.add_argument("dest_image", help="the copy's destination image")

    jobs = add("jobs", "list, show or wait for jobs", "imagerelay jobs wait j-5d8s0a1b")
    jsub = jobs.add_subparsers(dest="action", required=True)
    jlist = leaf(jsub, "list", "your jobs, newest first", "imagerelay jobs list --active")
    jlist.add_argument("--active", action="store_true", help="only jobs with copies in flight")
    jshow = leaf(jsub, "show", "one job", "imagerelay jobs show j-5d8s0a1b")
    jshow.add_argument("job", help="the job's id")
    jwait = leaf(jsub, "wait", "wait for a job (and run its copies if no worker does)",
                 "imagerelay jobs wait j-5d8s0a1b --timeout 600")
    jwait.add_argument("job", help="the job's id")
    jwait.add_argument("--timeout", type=float,
                       help="give up after this many seconds (the copies go on)")

    for name, verb in (("share", "share an image with accounts"),
                       ("unshare", "stop sharing an image with accounts")):
        s = add(name, verb, f"imagerelay {name} m-3k9x2q7a team-b team-c")
        s.add_argument("image", help="your Custom image")
        s.add_argument("accounts", nargs="+", help="one or more accounts")

    su = add("shared-users", "accounts an image is shared with",
             "imagerelay shared-users m-3k9x2q7a")
    su.add_argument("image", help="your Custom image")
    rn = add("rename", "rename an image", "imagerelay rename m-3k9x2q7a golden-v2")
    rn.add_argument("image", help="your Custom image")
    rn.add_argument("name", help="its new name")
    dl = add("delete", "delete an image", "imagerelay delete m-3k9x2q7a")
    dl.add_argument("image", help="your Custom image")
    ex = add("export", "write an image's bytes to a file",
             "imagerelay export m-3k9x2q7a /tmp/golden.raw")
    ex.add_argument("image", help="the image to export")
    ex.add_argument("path", help="the file to write (must not exist, unless --force)")
    ex.add_argument("--force", action="store_true",
                    help="overwrite PATH if it is an existing file (never a link or device)")
    vf = add("verify", "re-read an image's bytes and check them against its digest",
             "imagerelay verify m-3k9x2q7a")
    vf.add_argument("image", help="the image to verify")
    sc = add("scrub", "read every stored chunk, quarantine damaged ones and repair the images "
                      "that need them from other regions (exit status 1 if damage remains)",
             "imagerelay scrub --region bj")
    sc.add_argument("--region", help="the region to scrub (default: every region)")
    ev = add("events", "the audit log", "imagerelay events --since 1h --follow")
    ev.add_argument("--since", type=_since, default=0, metavar="WHEN",
                    help="only events after event number WHEN (42), within a duration before "
                         "now (30s, 15m, 1h, 2d, 1h30m) or from an ISO time on "
                         "(2026-01-31T08:00, UTC unless it has an offset); default 0: all")
    ev.add_argument("--image", help="only the events of this image")
    ev.add_argument("--follow", action="store_true",
                    help="keep printing new events as they happen, until Ctrl-C (--json: "
                         "one JSON object a line)")

    pb = add("run", "run a YAML playbook; running it again continues it and redoes what "
                    "drifted since, never duplicates",
             "imagerelay run rollout.yaml --var image_file=/data/golden.raw")
    pb.add_argument("playbook", help="the playbook file (relative paths in it are relative "
                                     "to its folder)")
    pb.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                    type=_playbook_var, help="override a var of the playbook (repeatable)")
    pb.add_argument("--dry-run", action="store_true",
                    help="check every step against the catalog, say what would be done or "
                         "redone, and change nothing")

    sv = add("serve", "serve BCC's image API (v2 paths, bce-auth-v1) over HTTP, one "
                      "endpoint per region, until Ctrl-C or SIGTERM",
             "imagerelay serve --listen bj=127.0.0.1:8080 --listen gz=127.0.0.1:8081")
    sv.add_argument("--listen", action="append", default=[], metavar="REGION=HOST:PORT",
                    help="serve REGION's endpoint on HOST:PORT (repeatable); default: every "
                         "region, on --host, on consecutive ports from --port")
    sv.add_argument("--host", default="127.0.0.1",
                    help="the address of the default listeners (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8080,
                    help="the first port of the default listeners (default 8080), one more "
                         "for each region in the order `regions list` gives")
    sv.add_argument("--public-host", action="append", default=[], metavar="REGION=HOST[:PORT]",
                    help="the host clients sign for REGION's endpoint (a proxy's name, say; "
                         "repeatable): its endpoint then answers only requests signed for "
                         "these; requests signed for another region's endpoint are refused "
                         "in any case")
    sv.add_argument("--tls-cert", metavar="FILE",
                    help="serve HTTPS with this PEM certificate (chain); needs --tls-key")
    sv.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    sv.add_argument("--allow-import-dir", action="append", default=[], metavar="DIR",
                    help="let a bosUrl name a file under DIR (file:// or a path); "
                         "repeatable; by default no file of this machine can be imported")
    sv.add_argument("--allow-import-host", action="append", default=[], metavar="HOST",
                    help="let a bosUrl reach HOST (a name, an address or a CIDR network) even "
                         "if it is loopback, private or link-local; repeatable")
    sv.add_argument("--max-body", type=int, default=64 * 1024, metavar="BYTES",
                    help="refuse request bodies larger than this (default 65536)")
    sv.add_argument("--metrics-allow", action="append", default=[], metavar="CIDR",
                    help="clients that may read /metrics besides loopback ones (repeatable)")

    wk = add("worker", "run queued copies for this home",
             "imagerelay worker --until-idle")
    wk.add_argument("--until-idle", action="store_true", help="exit once no copy is queued")
    wk.add_argument("--concurrency", type=int, default=None, metavar="N",
                    help="copies this worker runs at once (1-1024, default 4); with a shared "
                         "catalog, each host's worker takes its share")
    wk.add_argument("--regions", default=None, metavar="ID,ID",
                    help="the regions this host reaches (default: all); copies from or to "
                         "another region are left queued for a worker that reaches them")

    demo = add("demo", "replicate-then-share on a fresh home", "imagerelay demo")
    demo.add_argument("--keep", action="store_true", help="keep the demo home afterwards")
    demo.add_argument("--data-mib", type=int, default=256, help="data in the demo image")
    demo.add_argument("--virtual-gib", type=int, default=3, help="virtual size of the image")
    return p


def run(args: argparse.Namespace, out: Output) -> int:
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(home=Path(args.home) if args.home else None, keep=args.keep,
                        data_mib=args.data_mib, virtual_gib=args.virtual_gib)
    needs_workers = args.command in WAITING_COMMANDS or (
        args.command == "replicate" and args.wait) or (
        args.command == "jobs" and args.action == "wait") or (
        args.command == "run" and not args.dry_run)
    workers = args.concurrency if args.command == "worker" else None
    reach = None
    if args.command == "worker" and args.regions is not None:
        reach = [r.strip() for r in args.regions.split(",") if r.strip()]
    with cloud_module.open(args.home, account=args.account, catalog=args.catalog,
                           start_workers=needs_workers, workers=workers,
                           worker_regions=reach) as cloud:
        started = False
        if not needs_workers and cloud.copies_waiting_for_a_worker():
            # A background worker was killed (or never started): its copies go on now,
            # instead of showing Running until something else opens the home.
            started = ensure_background_worker(cloud.home, cloud._catalog_uri)
        return dispatch(cloud, args, out, worker_started=started)


def dispatch(cloud: cloud_module.Cloud, args: argparse.Namespace, out: Output, *,
             worker_started: bool = False) -> int:
    cmd = args.command
    action = getattr(args, "action", None)
    if cmd == "regions" and action == "list":
        regions = cloud.regions
        out.emit(regions, lambda: output.regions_table(regions))
    elif cmd == "regions" and action == "remove":
        cloud.remove_region(args.region_id)
        out.emit({"removed": args.region_id}, lambda: f"removed region {args.region_id}")
    elif cmd == "regions" and action == "move":
        r = cloud.move_region(args.region_id, args.store)
        out.emit(r, lambda: f"region {r.id} now uses {r.store}")
    elif cmd == "regions":
        credentials = region_credentials(args)
        r = cloud.add_region(args.region_id, args.store, name=args.name, **credentials)
        out.emit(r, lambda: f"added region {r.id} ({r.store})")
        if r.store.startswith("s3://") and not credentials:
            output.warning(output.no_region_credentials(r.id))
    elif cmd == "accounts" and action == "list":
        accounts = cloud.accounts
        out.emit(accounts, lambda: output.accounts_table(accounts))
    elif cmd == "accounts" and action == "remove":
        cloud.remove_account(args.account_id)
        out.emit({"removed": args.account_id}, lambda: f"removed account {args.account_id}")
    elif cmd == "accounts" and action == "keys":
        _access_keys(cloud, args, out)
    elif cmd == "accounts":
        a = cloud.add_account(args.account_id, name=args.name)
        out.emit(a, lambda: f"added account {a.id}")
    elif cmd == "images" and action == "list":
        images = cloud.images(args.region, image_type=args.type, name=args.name)
        waiting = _waiting(cloud, worker_started)
        out.emit(images, lambda: output.images_table(images, waiting))
    elif cmd == "images":
        image = cloud.image(args.image)
        out.emit(image, lambda: output.image_details(image))
    elif cmd == "import":
        image = cloud.import_image(args.source, region=args.region, name=args.name,
                                   os_type=args.os_type, os_name=args.os_name,
                                   os_version=args.os_version, os_arch=args.os_arch,
                                   format=args.format, description=args.description,
                                   progress=out.bars)
        if image.digest is None:  # a mostly-empty file: the digest comes after the data
            out.note(f"{image.id} is Available; computing its digest (hashing "
                     f"{human_size(image.size)}, holes included)...")
            image.wait_digest(progress=out.bars)
        out.emit(image, lambda: output.imported(image))
    elif cmd == "replicate":
        job = cloud.replicate(args.image, _split(args.to), name=args.name,
                              client_token=args.client_token)
        if args.wait:
            job.wait(progress=out.bars, raise_on_error=False)
        else:
            ensure_background_worker(cloud.home, cloud._catalog_uri)
        out.emit(output.job_json(job), lambda: output.job_copies(job))
        if args.wait and job.state == "Failed":
            return _job_failed(job)
    elif cmd == "cancel":
        cloud.cancel_copy(args.dest_image)
        out.emit({"cancelled": args.dest_image}, lambda: f"cancelled the copy {args.dest_image}")
    elif cmd == "jobs" and action == "list":
        jobs = cloud.jobs(active=True if args.active else None)
        waiting = _waiting(cloud, worker_started)
        out.emit([output.job_json(j, waiting) for j in jobs],
                 lambda: output.jobs_table(jobs, waiting) + waiting.hints(jobs))
    elif cmd == "jobs":
        job = cloud.job(args.job)
        if action == "wait":
            job.wait(args.timeout, progress=out.bars, raise_on_error=False)
        waiting = _waiting(cloud, worker_started)
        out.emit(output.job_json(job, waiting),
                 lambda: output.job_details(job, waiting) + waiting.hints([job]))
        if action == "wait" and job.state == "Failed":
            return _job_failed(job)
    elif cmd in ("share", "unshare"):
        getattr(cloud, cmd)(args.image, args.accounts)
        out.emit({"image": args.image, "accounts": args.accounts},
                 lambda: f"{cmd}d {args.image} with {', '.join(args.accounts)}")
    elif cmd == "shared-users":
        users = cloud.shared_users(args.image)
        out.emit(users, lambda: "\n".join(users))
    elif cmd == "rename":
        cloud.rename_image(args.image, args.name)
        out.emit({"image": args.image, "name": args.name}, lambda: f"renamed {args.image}")
    elif cmd == "delete":
        cloud.delete_image(args.image)
        out.emit({"deleted": args.image}, lambda: f"deleted {args.image}")
    elif cmd == "export":
        path = cloud.export_image(args.image, args.path, progress=out.bars, force=args.force)
        out.emit({"image": args.image, "path": path}, lambda: f"wrote {path}")
    elif cmd == "verify":
        digest = cloud.verify_image(args.image, progress=out.bars)
        out.emit({"image": args.image, "digest": digest}, lambda: f"{args.image} ok: {digest}")
    elif cmd == "scrub":
        reports = cloud.scrub(args.region, progress=out.bars)
        out.emit(reports, lambda: output.scrub_reports(reports))
        damaged = [i for r in reports for i in r.images_damaged]
        if damaged:
            output.error(output.still_damaged(damaged))
            return 1
        if any(r.unavailable for r in reports):
            output.error("Region.StoreUnavailable: not every region was scrubbed: "
                         + "; ".join(f"{r.region}: {r.unavailable}" for r in reports
                                     if r.unavailable))
            return 1
    elif cmd == "events":
        events = cloud.events(since=args.since, image_id=args.image)
        if args.follow:
            return _follow_events(cloud, events, args.since, args.image, out)
        out.emit(events, lambda: output.events_table(events))
    elif cmd == "run":
        from .playbook import Playbook

        book = Playbook.load(args.playbook)
        result = book.run(cloud, vars=dict(args.var), dry_run=args.dry_run,
                          progress=out.bars, on_step=out.step_printer())
        if not args.dry_run and cloud.jobs(active=True):
            # copies of `wait: false` steps go on
            ensure_background_worker(cloud.home, cloud._catalog_uri)
        out.emit(result.to_dict(), result.summary)
    elif cmd == "worker":
        return run_worker(cloud, until_idle=args.until_idle)
    elif cmd == "serve":
        from .serve.command import serve_command

        return serve_command(cloud, args)
    return 0


def _access_keys(cloud: cloud_module.Cloud, args: argparse.Namespace, out: Output) -> None:
    if args.keys_action == "create":
        key = cloud.create_access_key(args.account_id)
        out.emit({"access_key_id": key.access_key_id,
                  "secret_access_key": key.secret_access_key},
                 lambda: output.new_access_key(key))
    elif args.keys_action == "list":
        keys = cloud.access_keys(args.account_id)
        out.emit([k.access_key_id for k in keys], lambda: output.access_keys_table(keys))
    else:
        cloud.delete_access_key(args.account_id, args.key_id)
        out.emit({"deleted": args.key_id},
                 lambda: f"deleted access key {args.key_id} of {args.account_id}")


def _follow_events(cloud: cloud_module.Cloud, events: list[Event],
                   since: int | datetime | timedelta, image_id: str | None, out: Output) -> int:
    """``events --follow``: the events so far, then each new one as it happens, until
    Ctrl-C (exit status 0: that is how it is meant to end)."""
    follow = output.EventFollower(out.as_json)
    follow.show(events)
    if events:
        last = events[-1].seq
    elif isinstance(since, int):
        last = since
    else:  # a time that matched nothing yet: go on after the newest event there is
        last = max((e.seq for e in cloud.events(image_id=image_id)), default=0)
    try:
        while True:
            new = cloud.wait_events(since=last, image_id=image_id)
            follow.show(new)
            last = new[-1].seq if new else last
    except KeyboardInterrupt:
        return 0


def _waiting(cloud: cloud_module.Cloud, worker_started: bool) -> output.Waiting:
    return output.Waiting(set(cloud.copies_waiting_for_a_worker()), worker_started, cloud.home)


def _job_failed(job: Job) -> int:
    """Exit status 1, with the error line, for a job waited for that failed."""
    output.error(output.job_failed(job))
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(args.json)
    try:
        with lines_without_terminal():
            return run(args, out)
    except ImageRelayError as e:
        output.failed(e, as_json=args.json)
        return 1
    except KeyboardInterrupt:
        output.interrupted()
        return 130
    except BrokenPipeError:
        # The reader went away (`imagerelay events | head`): no traceback; point stdout at
        # /dev/null so that flushing it at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
