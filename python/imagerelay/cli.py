"""The ``imagerelay`` command line (API.md "Command line"): its arguments and which call
each command makes. What it prints is made in ``_cli_output``; the background worker that
goes on with queued copies is ``_worker``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import _cli_output as output
from . import cloud as cloud_module
from ._cli_output import Output
from ._worker import ensure_background_worker, run_worker
from .collections import human_size
from .errors import ImageRelayError
from .job import Job

WAITING_COMMANDS = {"worker", "demo"}


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imagerelay",
        description="Replicate VM images between regions and share them between accounts.",
        epilog="example: imagerelay import golden.raw --region bj --name golden")
    p.add_argument("--home", help="home directory (default $IMAGERELAY_HOME or ~/.imagerelay)")
    p.add_argument("--account", help="acting account (default $IMAGERELAY_ACCOUNT or default)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=f"example: {example}")

    regions = add("regions", "list or add regions", "imagerelay regions list")
    rsub = regions.add_subparsers(dest="action", required=True)
    rsub.add_parser("list", help="list regions", epilog="example: imagerelay regions list")
    radd = rsub.add_parser("add", help="add a region",
                           epilog="example: imagerelay regions add hk /data/hk --name Hong-Kong")
    radd.add_argument("region_id")
    radd.add_argument("store", nargs="?", help="path or file:// / s3:// URI")
    radd.add_argument("--name")

    accounts = add("accounts", "list or add accounts", "imagerelay accounts add team-b")
    asub = accounts.add_subparsers(dest="action", required=True)
    asub.add_parser("list", help="list accounts", epilog="example: imagerelay accounts list")
    aadd = asub.add_parser("add", help="add an account",
                           epilog="example: imagerelay accounts add team-b")
    aadd.add_argument("account_id")
    aadd.add_argument("--name")

    images = add("images", "list or show images", "imagerelay images list --region gz")
    isub = images.add_subparsers(dest="action", required=True)
    ilist = isub.add_parser("list", help="images the account sees",
                            epilog="example: imagerelay images list --type Custom")
    ilist.add_argument("--region")
    ilist.add_argument("--type", default="All", choices=["All", "System", "Custom", "Sharing"])
    ilist.add_argument("--name")
    ishow = isub.add_parser("show", help="one image", epilog="example: imagerelay images show m-3k9x2q7a")
    ishow.add_argument("image")

    imp = add("import", "import a file as a Custom image",
              "imagerelay import golden.raw --region bj --name golden --os-version 22.04")
    imp.add_argument("source")
    imp.add_argument("--region", required=True)
    imp.add_argument("--name", required=True)
    imp.add_argument("--os-type", default="linux")
    imp.add_argument("--os-name", default="")
    imp.add_argument("--os-version", default="")
    imp.add_argument("--os-arch", default="x86_64")
    imp.add_argument("--format", choices=["raw", "qcow2", "vmdk", "vhd"],
                     help="what the file must be (default: what its header says)")
    imp.add_argument("--description", default="")

    rep = add("replicate", "copy an image to other regions",
              "imagerelay replicate m-3k9x2q7a --to gz,su --wait")
    rep.add_argument("image")
    rep.add_argument("--to", required=True, action="append", help="regions, comma-separated")
    rep.add_argument("--name")
    rep.add_argument("--client-token")
    rep.add_argument("--wait", action="store_true", help="wait for the copies, with progress")

    can = add("cancel", "cancel a copy in flight by its destination image",
              "imagerelay cancel m-7f2k1c9z")
    can.add_argument("dest_image")

    jobs = add("jobs", "list, show or wait for jobs", "imagerelay jobs wait j-5d8s0a1b")
    jsub = jobs.add_subparsers(dest="action", required=True)
    jlist = jsub.add_parser("list", help="your jobs, newest first",
                            epilog="example: imagerelay jobs list --active")
    jlist.add_argument("--active", action="store_true")
    jshow = jsub.add_parser("show", help="one job", epilog="example: imagerelay jobs show j-5d8s0a1b")
    jshow.add_argument("job")
    jwait = jsub.add_parser("wait", help="wait for a job",
                            epilog="example: imagerelay jobs wait j-5d8s0a1b --timeout 600")
    jwait.add_argument("job")
    jwait.add_argument("--timeout", type=float)

    for name, verb in (("share", "share an image with accounts"),
                       ("unshare", "stop sharing an image with accounts")):
        s = add(name, verb, f"imagerelay {name} m-3k9x2q7a team-b team-c")
        s.add_argument("image")
        s.add_argument("accounts", nargs="+")

    su = add("shared-users", "accounts an image is shared with",
             "imagerelay shared-users m-3k9x2q7a")
    su.add_argument("image")
    rn = add("rename", "rename an image", "imagerelay rename m-3k9x2q7a golden-v2")
    rn.add_argument("image")
    rn.add_argument("name")
    dl = add("delete", "delete an image", "imagerelay delete m-3k9x2q7a")
    dl.add_argument("image")
    ex = add("export", "write an image's bytes to a file",
             "imagerelay export m-3k9x2q7a /tmp/golden.raw")
    ex.add_argument("image")
    ex.add_argument("path")
    ex.add_argument("--force", action="store_true",
                    help="overwrite PATH if it is an existing file (never a link or device)")
    vf = add("verify", "re-read an image's bytes and check them against its digest",
             "imagerelay verify m-3k9x2q7a")
    vf.add_argument("image")
    sc = add("scrub", "read every stored chunk, quarantine damaged ones and repair the images "
                      "that need them from other regions (exit status 1 if damage remains)",
             "imagerelay scrub --region bj")
    sc.add_argument("--region", help="the region to scrub (default: every region)")
    ev = add("events", "the audit log", "imagerelay events --image m-3k9x2q7a")
    ev.add_argument("--since", type=int, default=0)
    ev.add_argument("--image")

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

    wk = add("worker", "run queued copies for this home",
             "imagerelay worker --until-idle")
    wk.add_argument("--until-idle", action="store_true", help="exit once no copy is queued")

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
    with cloud_module.open(args.home, account=args.account,
                           start_workers=needs_workers) as cloud:
        if not needs_workers and cloud._engine.copies_waiting_for_a_worker():
            # A background worker was killed (or never started): its copies go on now,
            # instead of showing Running until something else opens the home.
            ensure_background_worker(cloud.home)
        return dispatch(cloud, args, out)


def dispatch(cloud: cloud_module.Cloud, args: argparse.Namespace, out: Output) -> int:
    cmd = args.command
    action = getattr(args, "action", None)
    if cmd == "regions" and action == "list":
        regions = cloud.regions
        out.emit(regions, lambda: output.regions_table(regions))
    elif cmd == "regions":
        r = cloud.add_region(args.region_id, args.store, name=args.name)
        out.emit(r, lambda: f"added region {r.id} ({r.store})")
    elif cmd == "accounts" and action == "list":
        accounts = cloud.accounts
        out.emit(accounts, lambda: output.accounts_table(accounts))
    elif cmd == "accounts":
        a = cloud.add_account(args.account_id, name=args.name)
        out.emit(a, lambda: f"added account {a.id}")
    elif cmd == "images" and action == "list":
        images = cloud.images(args.region, image_type=args.type, name=args.name)
        out.emit(images, lambda: output.images_table(images))
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
            ensure_background_worker(cloud.home)
        out.emit(job, lambda: output.job_copies(job))
        if args.wait and job.state == "Failed":
            return _job_failed(job)
    elif cmd == "cancel":
        cloud.cancel_copy(args.dest_image)
        out.emit({"cancelled": args.dest_image}, lambda: f"cancelled the copy {args.dest_image}")
    elif cmd == "jobs" and action == "list":
        jobs = cloud.jobs(active=True if args.active else None)
        out.emit(jobs, lambda: output.jobs_table(jobs))
    elif cmd == "jobs":
        job = cloud.job(args.job)
        if action == "wait":
            job.wait(args.timeout, progress=out.bars, raise_on_error=False)
        out.emit(job, lambda: output.job_details(job))
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
    elif cmd == "events":
        events = cloud.events(since=args.since, image_id=args.image)
        out.emit(events, lambda: output.events_table(events))
    elif cmd == "run":
        from .playbook import Playbook

        book = Playbook.load(args.playbook)
        result = book.run(cloud, vars=dict(args.var), dry_run=args.dry_run,
                          progress=out.bars, on_step=out.step_printer())
        if not args.dry_run and cloud.jobs(active=True):
            ensure_background_worker(cloud.home)  # copies of `wait: false` steps go on
        out.emit(result.to_dict(), result.summary)
    elif cmd == "worker":
        return run_worker(cloud, until_idle=args.until_idle)
    return 0


def _job_failed(job: Job) -> int:
    """Exit status 1, with the error line, for a job waited for that failed."""
    output.error(output.job_failed(job))
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(args.json)
    try:
        return run(args, out)
    except ImageRelayError as e:
        output.error(f"{e.code}: {e.message}")
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
