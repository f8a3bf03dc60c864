"""Sequences the model check (test_rules_model.py) found, shrunk by Hypothesis and written out
as plain tests, each with the answer BCC's rules expect.

The engine does not pass the ones marked xfail yet: they are reported wrong answers of the
engine, outside the rules (cpp/src/engine/engine.cpp, `Engine::Verify` and
`Engine::Export`). `strict=True`: once the engine is fixed they pass, the xfail fails, and
the mark (and its tolerance in test_rules_model.py: VERIFY_OF_A_COPY_IN_FLIGHT,
EXPORT_OF_A_COPY_BEING_COPIED) must go.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import assert_error, make_dense, sha256_file

import imagerelay as ir

BLOCK = 4096


@pytest.fixture
def idle(home: Path) -> Iterator[ir.Cloud]:
    """An engine that runs no copy: what it replicates stays in flight (`Pending`)."""
    cloud = ir.open(home, limits=ir.Limits(chunk_size=BLOCK), start_workers=False)
    yield cloud
    cloud.close()


def run_copies(home: Path) -> None:
    with ir.open(home, limits=ir.Limits(chunk_size=BLOCK), workers=2) as worker:
        assert worker.wait_idle(timeout=120)


# -- engine answers the model showed wrong (reported, not fixed yet) -----------------------
@pytest.mark.xfail(strict=True, raises=ir.IntegrityError,
                   reason="the engine answers Transfer.IntegrityError (the copy's manifest is "
                          "not written yet) and its message says to scrub or delete the image")
def test_verify_of_a_copy_in_flight_is_refused_as_busy(idle: ir.Cloud, files: Path) -> None:
    # Shrunk: replicate(images_1, ['next']); read(owner, verify, images_2).
    image = idle.import_image(make_dense(files / "a.raw", 2 * BLOCK), region="gz", name="a")
    copy = idle.replicate(image.id, "su").tasks["su"].dest_image_id
    with pytest.raises(ir.ImageBusyError) as e:
        idle.verify_image(copy)
    # As export_image answers, and as errors.md says: only Available images are verified.
    assert_error(e, ir.ImageBusyError, "Image.ImageStatusForbidden", 409)
    assert idle.image(copy).status == "Replicating"


@pytest.mark.xfail(strict=True, raises=ir.ImageBusyError,
                   reason="Engine::Export takes any image with a source_image_id for a copy "
                          "in flight: a copy that is the source of a copy of its own is "
                          "refused while it is Replicating as a source")
def test_a_copy_being_copied_exports_like_any_source(idle: ir.Cloud, home: Path,
                                                     files: Path) -> None:
    # Shrunk: replicate(images_0, ['next']); run_copies(); replicate(images_2, ['next']);
    # read(owner, export, images_2).
    src = make_dense(files / "a.raw", 3 * BLOCK)
    image = idle.import_image(src, region="bj", name="a")
    copy = idle.replicate(image.id, "gz").tasks["gz"].dest_image_id
    run_copies(home)
    idle.replicate(copy, "su")
    idle.replicate(image.id, "su")
    assert idle.image(copy).status == idle.image(image.id).status == "Replicating"
    # DESIGN.md §2: while a source's copies are in flight, "reads still work".
    out = idle.export_image(image.id, files / "image.raw")
    assert sha256_file(out) == sha256_file(src)
    out = idle.export_image(copy, files / "copy.raw")
    assert sha256_file(out) == sha256_file(src)


# -- where the model read the documents otherwise; the engine's answer is the documented one
def test_a_client_token_answers_before_the_rules(idle: ir.Cloud, home: Path,
                                                 files: Path) -> None:
    """A retry gets its first job back while the copies are in flight (the source is
    `Replicating`) and after its source was deleted; a token used for other arguments
    answers IdempotentParameterMismatch before any rule, even for an image that is not
    there. Tokens are each account's own."""
    idle.add_account("bob")
    image = idle.import_image(make_dense(files / "a.raw", 2 * BLOCK), region="gz", name="a")
    job = idle.replicate(image.id, ["su"], client_token="t2")
    assert idle.replicate(image.id, ["su"], client_token="t2").id == job.id
    copy = job.tasks["su"].dest_image_id
    with pytest.raises(ir.ImageRelayError) as e:  # the copy is Replicating: the token answers
        idle.replicate(copy, ["bj"], client_token="t2")
    assert_error(e, ir.ConflictError, "IdempotentParameterMismatch", 409)
    with pytest.raises(ir.ImageRelayError) as e:
        idle.replicate("m-zzzzzzzz", ["bj"], client_token="t2")
    assert_error(e, ir.ConflictError, "IdempotentParameterMismatch", 409)
    run_copies(home)
    idle.delete_image(image.id)
    again = idle.replicate(image.id, ["su"], client_token="t2")
    assert again.id == job.id and again.state == "Completed"
    # bob's t2 is not default's.
    theirs = idle.as_account("bob").import_image(files / "a.raw", region="gz", name="b")
    bobs = idle.as_account("bob").replicate(theirs.id, ["su"], client_token="t2")
    assert bobs.id != job.id


def test_share_and_unshare_answer_account_by_account(idle: ir.Cloud, files: Path) -> None:
    """The rules about the listed accounts are checked one account after the other: the
    first account's broken rule answers, every one is in `.problems`."""
    idle.add_account("bob")
    image = idle.import_image(make_dense(files / "a.raw", 2 * BLOCK), region="gz", name="a")
    bob = idle.as_account("bob")
    theirs = bob.import_image(files / "a.raw", region="gz", name="b")
    # Shrunk: unshare(owner, images_1, ['default', 'ghost']).
    with pytest.raises(ir.ImageRelayError) as e:
        bob.unshare(theirs.id, ["default", "ghost"])
    assert_error(e, ir.ConflictError, "Image.AccountNotShared", 409,
                 problems=["Image.AccountNotShared", "Image.InvalidAccount"])
    with pytest.raises(ir.ImageRelayError) as e:
        idle.share(image.id, ["default", "ghost"])
    assert_error(e, ir.ValidationError, "Image.CannotShareToOwner", 403,
                 problems=["Image.CannotShareToOwner", "Image.InvalidAccount"])
    assert idle.shared_users(image.id) == []
