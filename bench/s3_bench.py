#!/usr/bin/env python3
"""S3 benchmark: imagerelay's S3 regions against `rclone copy` and `aws s3 cp`, same run,
same server (moto on 127.0.0.1, signatures checked). Writes bench/S3_RESULTS.md.

    python bench/s3_bench.py              # 1 GiB
    python bench/s3_bench.py --size-mib 64 --runs 1   # a smoke run

Timed: local -> S3 (replicate from a local region into a bucket) and S3 -> S3 (bucket to
bucket), each up to job.wait() returning; rclone and aws upload the same file to a bucket
and copy it bucket to bucket. moto keeps objects in memory: 1 GiB needs ~4-5 GiB of RAM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "python"))

from s3_server import S3Server, moto_server  # noqa: E402

import imagerelay as ir  # noqa: E402


PACK_PUTS: list[int] = []  # pack objects each imagerelay upload wrote


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def tool_env(s3: S3Server, cfg: Path) -> dict[str, str]:
    env = dict(os.environ, AWS_ACCESS_KEY_ID=s3.access_key_id,
               AWS_SECRET_ACCESS_KEY=s3.secret_access_key, AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE=str(cfg / "aws-config"), RCLONE_CONFIG=str(cfg / "rclone.conf"))
    env.pop("AWS_CA_BUNDLE", None)  # http endpoint; rclone refuses a custom CA bundle here
    (cfg / "aws-config").write_text("[default]\nregion = us-east-1\n")
    (cfg / "rclone.conf").write_text(
        "[m]\ntype = s3\nprovider = Other\nenv_auth = true\nregion = us-east-1\n"
        f"endpoint = {s3.endpoint}\nforce_path_style = true\n")
    return env


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--", "cpp",
                                "bindings", "python"], capture_output=True, text=True).stdout
        return rev + (" + uncommitted changes" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(cmd: list[str], env: dict[str, str]) -> None:
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)


def empty_bucket(s3: S3Server, bucket: str) -> None:
    client = s3.client()
    keys = s3.keys(bucket)
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket,
                              Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})


def imagerelay_pair(cloud: ir.Cloud, image: ir.Image, s3: S3Server, run_no: int):
    """(local -> S3, S3 -> S3, buckets) for imagerelay: replicate into bucket a, then a -> b."""
    a, b = f"ir-a-{run_no}", f"ir-b-{run_no}"
    for rid, bucket in ((f"a{run_no}", a), (f"b{run_no}", b)):
        s3.create_bucket(bucket)
        cloud.add_region(rid, f"s3://{bucket}/relay?endpoint={s3.endpoint}",
                         access_key_id=s3.access_key_id, secret_access_key=s3.secret_access_key)
    copy = {}

    def up() -> None:
        job = image.replicate(f"a{run_no}")
        job.wait(timeout=3600)
        copy["a"] = job.copies[f"a{run_no}"]
        # Requests of the upload: one PUT per pack object (plus a few small ones).
        packs = [k for k in s3.keys(a) if "/packs/" in k]
        PACK_PUTS.append(len(packs))

    return up, lambda: copy["a"].replicate(f"b{run_no}").wait(timeout=3600), [a, b]


def tool_pair(s3: S3Server, env: dict[str, str], src: Path, run_no: int, tool: str):
    """(upload, bucket-to-bucket copy, buckets) for rclone or aws."""
    prefix = "rc" if tool == "rclone" else "aw"
    first, second = f"{prefix}-{run_no}", f"{prefix}2-{run_no}"
    s3.create_bucket(first)
    s3.create_bucket(second)
    if tool == "rclone":
        up = ["rclone", "copy", "--s3-no-check-bucket", str(src), f"m:{first}/"]
        cp = ["rclone", "copy", "--s3-no-check-bucket", f"m:{first}/image.raw", f"m:{second}/"]
    else:
        up = ["aws", "--endpoint-url", s3.endpoint, "s3", "cp", str(src),
              f"s3://{first}/image.raw"]
        cp = ["aws", "--endpoint-url", s3.endpoint, "s3", "cp", f"s3://{first}/image.raw",
              f"s3://{second}/image.raw"]
    return lambda: run(up, env), lambda: run(cp, env), [first, second]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    size = args.size_mib << 20
    results: dict[str, list[float]] = {}
    work = Path(tempfile.mkdtemp(prefix="s3bench-", dir=HERE))
    try:
        src = work / "image.raw"
        with open(src, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        with moto_server() as s3:
            env = tool_env(s3, work)
            home = work / "home"
            with ir.open(home) as cloud:
                image = cloud.import_image(src, region="bj", name="bench")
                for run_no in range(args.runs):
                    pairs = [("imagerelay", imagerelay_pair(cloud, image, s3, run_no)),
                             ("rclone", tool_pair(s3, env, src, run_no, "rclone")),
                             ("aws s3 cp", tool_pair(s3, env, src, run_no, "aws"))]
                    # Each contender goes first once in a while: moto slows down as it fills.
                    shift = run_no % len(pairs)
                    for name, (up, copy, buckets) in pairs[shift:] + pairs[:shift]:
                        results.setdefault(f"{name} local -> S3", []).append(timed(up))
                        results.setdefault(f"{name} S3 -> S3", []).append(timed(copy))
                        for b in buckets:  # untimed: keeps moto's memory flat across runs
                            empty_bucket(s3, b)
        lines = [f"# S3 benchmark ({dt.date.today()}, engine git {git_revision()})", "",
                 f"{args.size_mib} MiB of random data, moto {__import__('moto').__version__} on "
                 f"127.0.0.1 (signatures checked), {args.runs} run(s), best and median "
                 "seconds and MiB/s. imagerelay writes 64 KiB blocks into ~16 MiB pack objects "
                 "(one PUT each) and reads them with ranged GETs; S3 -> S3 passes the bytes "
                 "through imagerelay (checked on the way), while rclone copies the object "
                 "server-side (one CopyObject of the whole file). Each run times every "
                 "contender's upload then its bucket-to-bucket copy; the contenders take turns "
                 "going first, and their buckets are emptied after them (untimed), so that "
                 "moto, which slows down as it fills, treats them alike.", "",
                 f"Command: `.venv/bin/python bench/s3_bench.py --size-mib {args.size_mib} "
                 f"--runs {args.runs}` (`make bench-s3`; rclone and aws on PATH)", "",
                 "| contender | best s | median s | best MiB/s |", "|---|---|---|---|"]
        for name, times in results.items():
            best = min(times)
            lines.append(f"| {name} | {best:.2f} | {statistics.median(times):.2f} | "
                         f"{args.size_mib / best:.1f} |")
        per_gib = [n * 1024 / args.size_mib for n in PACK_PUTS]
        lines += ["", f"Pack PUTs of imagerelay's local -> S3 upload: {PACK_PUTS} "
                  f"({max(per_gib):.0f} per GiB at most; target <= 200 requests per GiB written).",
                  "", "Target: no slower than the faster of rclone and aws (best vs best).", ""]
        for what in ("local -> S3", "S3 -> S3"):
            ours = min(results[f"imagerelay {what}"])
            tool, theirs = min(((t, min(results[f"{t} {what}"])) for t in ("rclone", "aws s3 cp")),
                               key=lambda x: x[1])
            verdict = "PASS" if ours <= theirs else "MISS"
            lines.append(f"- **{verdict}** {what}: imagerelay {ours:.2f} s vs {tool} "
                         f"{theirs:.2f} s ({ours / theirs:.2f}x)")
        lines += ["", "Against moto, rclone's upload logs one failed attempt: after the multipart "
                  "upload it HEADs the object with `?versionId=null`, which moto answers 400; "
                  "its retry finds the object complete and ends at once (well under a second "
                  "of the time above). `aws s3 cp` S3 -> S3 copies a multipart object part by "
                  "part (UploadPartCopy), which moto serves slowly."]
        (HERE / "S3_RESULTS.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
