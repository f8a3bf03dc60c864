"""The rules, model-checked (issue #16, point 2): Hypothesis drives random sequences of
import, replicate, cancel, share, unshare, delete, rename, verify and export, as several
accounts, against a small reference model of BCC's rules (tests/python/model/bcc_model.py,
written from the documents, not from the engine). Every answer (the result, or the error's
class, code and problems) must be the model's, and after every step the invariants hold:

- each account lists exactly what the model says it sees (System images, its own, those
  shared with it), no image twice, and every other image answers `NoSuchImage`;
- every `Available` image verifies to the digest of the bytes imported;
- every job and task is in the model's state; shares are the model's;
- every block a live image needs is stored, and after a sweep nothing else is.

The engine of the test runs no copy worker: a replicate leaves its copies `Pending` until
the rule `run_copies` opens a worker engine on the home and waits until it is idle. So a
cancel finds its copy in flight or not, deterministically.

`IMAGERELAY_MODEL_EXAMPLES=N` runs N sequences instead of 100 and `IMAGERELAY_MODEL_STEPS=S`
sets their length (30); `pytest -s` prints the figures of the run. See docs/reliability.md.
"""

from __future__ import annotations

import fnmatch
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import chunk_names
from invariants import wasteful_packs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from model.bcc_model import AVAILABLE, CODE_CLASS, Limits, Model, Rejected, digest

import imagerelay as ir

BLOCK = 4096  # the smallest chunk size: images of a few blocks
REGIONS = ["bj", "gz", "su"]
ACCOUNTS = ["default", "bob", "carol", "dave"]
# Small limits, so that sequences of a few steps reach them.
MODEL_LIMITS = Limits(max_copy_bytes=4 * BLOCK, max_import_bytes=5 * BLOCK,
                      max_share_accounts=2, max_accepted_shares=1)
LIMITS = ir.Limits(chunk_size=BLOCK, max_copy_bytes=MODEL_LIMITS.max_copy_bytes,
                   max_import_bytes=MODEL_LIMITS.max_import_bytes,
                   max_share_accounts=MODEL_LIMITS.max_share_accounts,
                   max_accepted_shares=MODEL_LIMITS.max_accepted_shares)
NO_IMAGE = "m-zzzzzzzz"  # well formed, never an image

# The bytes images are made of: a zero block and five random ones (fixed, so that a run is
# reproducible); images share blocks, which a region stores once.
_rng = random.Random(16)
POOL = [bytes(BLOCK)] + [_rng.randbytes(BLOCK) for _ in range(5)]
TAIL = _rng.randbytes(1000)

# A sequence makes and removes a home (~800 directories a region): in memory where the
# machine has a tmpfs, which makes that cheap.
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

EXAMPLES = int(os.environ.get("IMAGERELAY_MODEL_EXAMPLES", "100"))
STEPS = int(os.environ.get("IMAGERELAY_MODEL_STEPS", "30"))

# -- what the rules draw ------------------------------------------------------------------
# Who acts: "owner" (the image's or job's owner) about half of the time, else any account.
actors = st.sampled_from(["owner", "owner", "owner", *ACCOUNTS])
# Several blocks from the pool, maybe a partial last block: up to 5 blocks and the partial
# one, over the copy limit (4 blocks) and the import limit (5 blocks) at the top.
block_lists = st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=5)
contents = st.builds(
    lambda blocks, tail: b"".join(POOL[b] for b in blocks) + (TAIL if tail else b""),
    st.one_of(st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=3), block_lists),
    st.booleans())
import_regions = st.sampled_from([*REGIONS, *REGIONS, "xx"])
image_names = st.sampled_from(["golden", "base.v2", "web/1", "x", "golden", "9lives", ""])
copy_names = st.one_of(st.none(), st.none(), st.sampled_from(["copy-a", "copy_b", "-bad"]))
new_names = st.sampled_from(["renamed", "r.2", "_bad"])
# Destinations relative to the source's region: the next region and the one after (valid),
# the source's own and an unknown one (not).
destinations = st.one_of(
    st.lists(st.sampled_from(["next", "after"]), min_size=1, max_size=3),
    st.lists(st.sampled_from(["next", "after", "self", "xx"]), max_size=3))
share_lists = st.one_of(st.sampled_from([*ACCOUNTS, "ghost"]),
                        st.lists(st.sampled_from([*ACCOUNTS, "ghost"]), max_size=3))
tokens = st.one_of(st.none(), st.sampled_from(["t1", "t2"]))
# The calls on_system_image and on_deleted_image make.
calls = st.sampled_from(["replicate", "cancel_copy", "share", "unshare", "shared_users",
                         "rename", "delete", "read"])


class Figures:
    """What a run did (printed by `pytest -s`, for docs/reliability.md)."""

    sequences = 0
    steps = 0
    answers: Counter[str] = Counter()  # "call -> ok" or "call -> code"


class RulesMachine(RuleBasedStateMachine):
    # Custom images made so far (a deleted one moves to self.deleted); the copies are in
    # `copies` as well. System images have a bundle of their own (rule on_system_image).
    images = Bundle("images")
    copies = Bundle("copies")
    system_images = Bundle("system_images")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="imagerelay-model-", dir=SCRATCH))
        self.home = self.tmp / "home"
        self.cloud = ir.open(self.home, limits=LIMITS, start_workers=False)
        for account in ACCOUNTS[1:]:
            self.cloud.add_account(account)
        self.clouds = {a: self.cloud.as_account(a) for a in ACCOUNTS}
        self.model = Model(REGIONS, ACCOUNTS, MODEL_LIMITS, BLOCK)
        self.files = 0
        self.deleted: list[str] = []  # deleted images and cancelled copies
        Figures.sequences += 1

    def teardown(self) -> None:
        self.cloud.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------
    def _file(self, data: bytes | None = None) -> Path:
        self.files += 1
        path = self.tmp / f"file-{self.files}.raw"
        if data is not None:
            path.write_bytes(data)
        return path

    def _actor(self, actor: str, image_id: str) -> str:
        """The account an actor names: "owner" is the image's owner (`default` for a System
        image), anything else the account itself."""
        if actor != "owner":
            return actor
        image = self.model.images.get(image_id)
        return (image.owner if image is not None else None) or "default"

    def _ask(self, what: str, call: Callable[[], Any], expected: Rejected | object,
             ) -> tuple[Any, bool]:
        """Makes the call and compares its answer with the model's: (result, True) when
        the call succeeded as the model expects, (None, False) when it failed as expected."""
        Figures.steps += 1
        try:
            result = call()
        except ir.ImageRelayError as err:
            Figures.answers[f"{what.split('(')[0]} -> {err.code}"] += 1
            assert isinstance(expected, Rejected), (
                f"{what}: {type(err).__name__} {err}; the model expects success")
            got = [p[0] for p in err.problems]
            assert err.code == expected.code, (
                f"{what}: {type(err).__name__} {err} (problems {got}); the model expects "
                f"{expected.code} (problems {list(expected.codes)})")
            assert type(err).__name__ == CODE_CLASS[expected.code], f"{what}: {err!r}"
            assert set(got) == set(expected.codes), (
                f"{what}: problems {got}; the model expects {list(expected.codes)}")
            return None, False
        Figures.answers[f"{what.split('(')[0]} -> ok"] += 1
        assert not isinstance(expected, Rejected), (
            f"{what} succeeded; the model expects {expected.code}")
        return result, True

    # -- setup ----------------------------------------------------------------------------
    @initialize(target=system_images)
    def add_system_images(self) -> Any:
        """A System image in bj and one in gz, seen by every account, owned by none."""
        ids = []
        for region, data in (("bj", POOL[1] + POOL[2]), ("gz", POOL[2] + POOL[0])):
            image = self.cloud.add_system_image(self._file(data), region=region, name="base")
            self.model.add_image(image.id, region, "base", None, data)
            ids.append(image.id)
        return multiple(*ids)

    @initialize(target=images, mine=contents, bobs=contents)
    def import_first_images(self, mine: bytes, bobs: bytes) -> Any:
        """default's image in bj and bob's in gz, so that every sequence has some to act on."""
        ids = []
        for account, region, data in (("default", "bj", mine), ("bob", "gz", bobs)):
            data = data[:MODEL_LIMITS.max_import_bytes]
            image = self.clouds[account].import_image(self._file(data), region=region,
                                                      name="golden")
            self.model.add_image(image.id, region, "golden", account, data)
            ids.append(image.id)
        return multiple(*ids)

    # -- rules ----------------------------------------------------------------------------
    @rule(target=images, account=st.sampled_from(ACCOUNTS), region=import_regions,
          name=image_names, data=contents)
    def import_image(self, account: str, region: str, name: str, data: bytes) -> Any:
        expected = self.model.check_import(account, region, name, len(data))
        image, ok = self._ask(
            f"import_image({len(data)} bytes, region={region!r}, name={name!r}) as {account}",
            lambda: self.clouds[account].import_image(self._file(data), region=region,
                                                      name=name),
            expected)
        if not ok:
            return multiple()
        assert image.status == AVAILABLE and image.digest == digest(data), image
        self.model.add_image(image.id, region, name, account, data)
        return image.id

    @rule(targets=(images, copies), actor=actors, image=images, to=destinations,
          name=copy_names, token=tokens, as_string=st.booleans())
    def replicate(self, actor: str, image: str, to: list[str], name: str | None,
                  token: str | None, as_string: bool) -> Any:
        account = self._actor(actor, image)
        source = self.model.images.get(image)
        here = REGIONS.index(source.region) if source is not None else 0
        regions = [{"next": REGIONS[(here + 1) % 3], "after": REGIONS[(here + 2) % 3],
                    "self": REGIONS[here], "xx": "xx"}[r] for r in to]
        arg: str | list[str] = regions[0] if as_string and len(regions) == 1 else regions
        expected = self.model.check_replicate(account, image, regions, name, token)
        what = f"replicate({image}, {arg!r}, name={name!r}, client_token={token!r}) as {account}"
        job, ok = self._ask(what, lambda: self.clouds[account].replicate(
            image, arg, name=name, client_token=token), expected)
        if not ok:
            return multiple()
        if isinstance(expected, str):  # the token's first job: nothing new starts
            assert job.id == expected, f"{what}: job {job.id}, the first was {expected}"
            return multiple()
        assert job.state == "Running", f"{what}: {job.state}"
        dest_ids = {r: t.dest_image_id for r, t in job.tasks.items()}
        assert sorted(dest_ids) == sorted(set(regions)), f"{what}: tasks to {sorted(dest_ids)}"
        self.model.add_job(account, job.id, image, regions, name, token, dest_ids)
        return multiple(*dest_ids.values())

    @rule(targets=(images, copies), image=images,
          to=st.lists(st.sampled_from(["next", "after"]), min_size=1, max_size=2),
          token=tokens)
    def replicate_as_owner(self, image: str, to: list[str], token: str | None) -> Any:
        """replicate as the image's owner to other regions: copies to cancel and share."""
        return self.replicate("owner", image, to, None, token, False)

    @rule()
    def run_copies(self) -> None:
        """A worker engine runs every copy in flight to its end."""
        Figures.steps += 1
        if self.model.in_flight():
            with ir.open(self.home, limits=LIMITS, workers=2) as worker:
                assert worker.wait_idle(timeout=120), "the copies did not finish"
            self.model.run_copies()

    @rule(actor=actors, image=copies)
    def cancel_copy(self, actor: str, image: str) -> None:
        account = self._actor(actor, image)
        expected = self.model.check_cancel_copy(account, image)
        _, ok = self._ask(f"cancel_copy({image}) as {account}",
                          lambda: self.clouds[account].cancel_copy(image), expected)
        if ok:
            self.model.cancel([expected])  # type: ignore[list-item]
            self.deleted.append(image)

    @rule(actor=actors, image=images)
    def cancel_any_image(self, actor: str, image: str) -> None:
        """cancel_copy of any image, mostly not a copy in flight."""
        self.cancel_copy(actor, image)

    @precondition(lambda self: self.model.jobs)
    @rule(actor=actors, data=st.data(), whole=st.booleans())
    def cancel_job(self, actor: str, data: st.DataObject, whole: bool) -> None:
        job_id = data.draw(st.sampled_from(list(self.model.jobs)), label="job")
        job = self.model.jobs[job_id]
        account = job.account if actor == "owner" else actor
        region = None if whole else data.draw(st.sampled_from(sorted(job.tasks)),
                                             label="region")
        expected = self.model.check_cancel_job(account, job_id, region)
        _, ok = self._ask(f"job.cancel({job_id}, region={region!r}) as {account}",
                          lambda: self.clouds[account].job(job_id).cancel(region), expected)
        if ok:
            self.model.cancel(expected)  # type: ignore[arg-type]
            self.deleted.extend(t.dest_image_id for t in expected)  # type: ignore[union-attr]

    @rule(actor=actors, image=images, to=share_lists)
    def share(self, actor: str, image: str, to: str | list[str]) -> None:
        account = self._actor(actor, image)
        expected = self.model.check_share(account, image, [to] if isinstance(to, str) else to)
        _, ok = self._ask(f"share({image}, {to!r}) as {account}",
                          lambda: self.clouds[account].share(image, to), expected)
        if ok:
            self.model.images[image].shares.update(expected)  # type: ignore[arg-type]

    @rule(image=images, to=st.lists(st.sampled_from(ACCOUNTS[1:]), min_size=1, max_size=2))
    def share_as_owner(self, image: str, to: list[str]) -> None:
        """share as the image's owner with other accounts: recipients, quotas."""
        self.share("owner", image, to)

    @rule(image=images, data=st.data())
    def unshare_as_owner(self, image: str, data: st.DataObject) -> None:
        """unshare as the image's owner an account it is shared with, if any."""
        known = self.model.images.get(image)
        shares = sorted(known.shares) if known is not None else []
        to = data.draw(st.sampled_from(shares), label="account") if shares else "bob"
        self.unshare("owner", image, to)

    @rule(actor=actors, image=images, to=share_lists)
    def unshare(self, actor: str, image: str, to: str | list[str]) -> None:
        account = self._actor(actor, image)
        expected = self.model.check_unshare(account, image,
                                            [to] if isinstance(to, str) else to)
        _, ok = self._ask(f"unshare({image}, {to!r}) as {account}",
                          lambda: self.clouds[account].unshare(image, to), expected)
        if ok:
            self.model.images[image].shares.difference_update(expected)  # type: ignore

    @rule(actor=actors, image=images)
    def shared_users(self, actor: str, image: str) -> None:
        account = self._actor(actor, image)
        expected = self.model.shared_users(account, image)
        users, ok = self._ask(f"shared_users({image}) as {account}",
                              lambda: self.clouds[account].shared_users(image), expected)
        if ok:
            assert sorted(users) == expected, f"shared_users({image}): {users}"

    @rule(actor=actors, image=images, name=new_names)
    def rename(self, actor: str, image: str, name: str) -> None:
        account = self._actor(actor, image)
        expected = self.model.check_rename(account, image, name)
        _, ok = self._ask(f"rename_image({image}, {name!r}) as {account}",
                          lambda: self.clouds[account].rename_image(image, name), expected)
        if ok:
            self.model.images[image].name = name

    @rule(target=images, actor=actors, image=consumes(images))
    def delete(self, actor: str, image: str) -> Any:
        """A deleted image leaves `images` for self.deleted (rule on_deleted_image), so that
        the other rules mostly act on live images; one that is not deleted goes back."""
        if self._delete(self._actor(actor, image), image):
            self.deleted.append(image)
            return multiple()
        return image

    def _delete(self, account: str, image: str) -> bool:
        expected = self.model.check_delete(account, image)
        _, ok = self._ask(f"delete_image({image}) as {account}",
                          lambda: self.clouds[account].delete_image(image), expected)
        if ok:
            self.model.images[image].deleted = True
        return ok

    @rule(actor=actors, image=images, export=st.booleans())
    def read(self, actor: str, image: str, export: bool) -> None:
        """verify_image, or export_image compared byte for byte."""
        account = self._actor(actor, image)
        expected = self.model.check_read(account, image)
        cloud = self.clouds[account]
        if export:
            out = self._file()
            got, ok = self._ask(f"export_image({image}) as {account}",
                                lambda: cloud.export_image(image, out), expected)
            if ok:
                assert Path(got).read_bytes() == expected, f"export_image({image}): other bytes"
                Path(got).unlink()
        else:
            got, ok = self._ask(f"verify_image({image}) as {account}",
                                lambda: cloud.verify_image(image), expected)
            if ok:
                assert got == digest(expected), f"verify_image({image}): {got}"  # type: ignore

    @rule(account=st.sampled_from(ACCOUNTS), image=system_images, call=calls)
    def on_system_image(self, account: str, image: str, call: str) -> None:
        """The calls of the rules above on a System image (owned by no account)."""
        self._dispatch(account, image, call)

    @precondition(lambda self: self.deleted)
    @rule(actor=actors, data=st.data(), call=calls)
    def on_deleted_image(self, actor: str, data: st.DataObject, call: str) -> None:
        """The calls of the rules above on a deleted image or a cancelled copy."""
        image = data.draw(st.sampled_from(self.deleted), label="deleted image")
        self._dispatch(self._actor(actor, image), image, call)

    def _dispatch(self, account: str, image: str, call: str) -> None:
        if call == "replicate":
            self.replicate(account, image, ["next"], None, None, False)
        elif call in ("share", "unshare"):
            getattr(self, call)(account, image, ["bob"])
        elif call == "rename":
            self.rename(account, image, "renamed")
        elif call == "read":
            self.read(account, image, False)
        elif call == "delete":
            self._delete(account, image)
        else:
            getattr(self, call)(account, image)

    @rule(account=st.sampled_from(ACCOUNTS),
          region=st.one_of(st.none(), st.sampled_from(REGIONS)),
          image_type=st.sampled_from(["All", "System", "Custom", "Sharing"]),
          name=st.one_of(st.none(), st.sampled_from(["base", "golden", "copy-*", "*"])))
    def list_images(self, account: str, region: str | None, image_type: str,
                    name: str | None) -> None:
        """images() with its filters: the model's listing, filtered."""
        Figures.steps += 1
        got = self.clouds[account].images(region, image_type=image_type, name=name)
        ids = [i.id for i in got]
        assert len(ids) == len(set(ids)), f"an image listed twice: {ids}"
        want = {v.id for v in self.model.listing(account).values()
                if (region is None or v.region == region)
                and (image_type == "All" or v.type == image_type)
                and (name is None or fnmatch.fnmatchcase(v.name, name))}
        assert set(ids) == want, (f"{account}: images({region!r}, image_type={image_type!r}, "
                                  f"name={name!r}): {sorted(ids)}, expected {sorted(want)}")

    @rule()
    def settle(self) -> None:
        """Every copy ends, then the sweeps leave exactly the blocks live images need: each
        region's index (which lists live blocks only) holds those and no other, no pack is
        left without a live block, and none is mostly dead bytes (a sweep rewrites those:
        docs/data-plane-v2.md). The Python API does not show stored blocks: the test reads
        the region's index and packs, as conftest's helpers do."""
        self.run_copies()
        deadline = time.monotonic() + 60
        while True:
            stored = {r: chunk_names(self.home, r) for r in REGIONS}
            needed = {r: self.model.needed_blocks(r) for r in REGIONS}
            wasteful = {r: wasteful_packs(self.home, r) for r in REGIONS}
            if stored == needed and not any(wasteful.values()):
                return
            assert time.monotonic() < deadline, {
                r: (f"{len(stored[r] - needed[r])} blocks no live image needs, "
                    f"{len(needed[r] - stored[r])} missing, packs mostly dead: {wasteful[r]}")
                for r in REGIONS if stored[r] != needed[r] or wasteful[r]}
            time.sleep(0.05)


    # -- invariants -----------------------------------------------------------------------
    @invariant()
    def every_account_sees_what_the_model_says(self) -> None:
        for account, cloud in self.clouds.items():
            listed = cloud.images()
            ids = [i.id for i in listed]
            assert len(ids) == len(set(ids)), f"{account}: an image listed twice: {ids}"
            got = {i.id: (i.region, i.name, i.type, i.owner, i.status, i.size,
                          i.source_image_id, i.source_region) for i in listed}
            want = {v.id: (v.region, v.name, v.type, v.owner, v.status, v.size,
                           v.source_image_id, v.source_region)
                    for v in self.model.listing(account).values()}
            assert got == want, f"{account} lists {got}, the model {want}"
            # Every image the model knows (deleted ones and others' private ones included)
            # and one that never was: shown as listed, or NoSuchImage, never AccessDenied.
            for image_id in [*self.model.images, NO_IMAGE]:
                expected = self.model.get(account, image_id)
                try:
                    image = cloud.image(image_id)
                except ir.ImageRelayError as err:
                    assert isinstance(expected, Rejected), (
                        f"{account}: image({image_id}): {err}; the model sees it")
                    assert type(err) is ir.NotFoundError and err.code == "NoSuchImage", err
                    continue
                assert not isinstance(expected, Rejected), (
                    f"{account}: image({image_id}) is shown; the model expects NoSuchImage")
                assert (image.type, image.status) == (expected.type, expected.status)

    @invariant()
    def jobs_and_shares_are_the_models(self) -> None:
        for account, cloud in self.clouds.items():
            want = {j.id: (j.state, {r: (t.state, t.dest_image_id) for r, t in j.tasks.items()},
                           # docs/python-api.md Job.copies: the copies that exist
                           sorted(t.dest_image_id for t in j.tasks.values()
                                  if not self.model.images[t.dest_image_id].deleted))
                    for j in self.model.jobs_of(account).values()}
            got = {j.id: (j.state, {r: (t.state, t.dest_image_id) for r, t in j.tasks.items()},
                          sorted(i.id for i in j.copies.values()))
                   for j in cloud.jobs()}
            assert got == want, f"{account}: jobs {got}, the model {want}"
            for image in self.model.images.values():
                if image.owner == account and not image.deleted:
                    assert sorted(cloud.shared_users(image.id)) == sorted(image.shares)

    @invariant()
    def every_available_image_verifies(self) -> None:
        for image in self.model.images.values():
            if self.model.status(image) == AVAILABLE:
                cloud = self.clouds[image.owner or "default"]
                assert cloud.verify_image(image.id) == digest(image.data), image.id

    @invariant()
    def every_needed_block_is_stored(self) -> None:
        for region in REGIONS:
            missing = self.model.needed_blocks(region) - chunk_names(self.home, region)
            assert not missing, f"{region}: {len(missing)} blocks of live images are missing"


SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=EXAMPLES <= 200,  # the test suite's run is the same every time
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
    print_blob=True,
)


def test_rules_model() -> None:
    started = time.monotonic()
    run_state_machine_as_test(RulesMachine, settings=SETTINGS)
    print(f"\nrules model: {Figures.sequences} sequences, {Figures.steps} steps in "
          f"{time.monotonic() - started:.0f} s")
    for answer, count in sorted(Figures.answers.items()):
        print(f"  {count:6d}  {answer}")
