"""YAML playbooks: a replicate-then-share rollout written down once, re-runnable at will.

    import imagerelay as ir
    with ir.open() as cloud:
        result = ir.Playbook.load("rollout.yaml").run(cloud, vars={"image_file": "v2.raw"})
        print(result.outputs["copies"].copies)

A playbook (API.md "Playbooks") has a ``name``, an acting ``account``, ``vars`` and
``steps``; each step is one of the kinds in :data:`STEP_KINDS`, with an optional ``id:`` (so
that later steps can use its output as ``${id.attribute...}``) and an optional
``as: <account>``.

Re-running a playbook with the same ``name`` continues it and converges: it never
duplicates an import, a copy or a share, also after a run that failed or was killed
half-way, and it redoes what drifted since the last run. A step is skipped only when the
run state says it is done *and* the catalog shows it still done; what was undone by hand
is done again (and only that), the step reported ``redone`` with what drifted
(``StepLog.drift``, e.g. ``the copy in gz (m-3k9x2q7a) was deleted``):

- The run state lives in ``<home>/playbooks/<name>.json``, written atomically after every
  step. It maps a step (its id, or ``#<n>``) and the fingerprint of its resolved arguments
  (kind, acting account, arguments after ``${...}`` substitution, absolute paths) to what the
  step produced, as ids. A step whose arguments changed runs again (``done``).
- ``import`` records the new image's id as soon as the import starts. On a re-run the
  recorded image is reused when it is ``Available``, ``Replicating`` or ``NotAvailable``
  (damaged: ``scrub`` repairs it); it is waited for while ``Creating``; a ``CreateFailed``
  one (e.g. the importing process was killed) is deleted and the file imported again, and
  so is one that was deleted since.
- ``replicate`` passes the engine a client token derived from (playbook name, step, resolved
  arguments, attempt), so a run killed between starting the job and recording it gets the
  same job back; a recorded job still running is waited for (its copies resume under this
  engine). Once the job is over, every region of ``to`` must hold its copy: the regions
  whose copy failed (a ``Failed`` job), was deleted or cancelled since, or is
  ``CreateFailed`` are copied again, as a new job to those regions only (a region whose
  copy is there is never copied twice); the step's output then shows the copies of every
  attempt, so ``${copies.copies.gz.id}`` names the new copy and the steps that use it
  follow.
- ``share`` / ``unshare`` touch only the accounts that are not shared / still shared, so
  an account unshared (shared) by hand since is shared (unshared) again; ``rename`` renames
  again an image renamed since; ``delete`` does nothing if the image is gone; ``cancel``
  does nothing if the copy was already cancelled.
- Each step converges to what it says where it stands in the playbook: a share that a
  later ``unshare`` step undoes is shared again on a re-run (so that the steps between see
  it), then unshared again; two renames of one image, the same. Removals are the
  exception: a copy or an image that a later ``delete`` or ``cancel`` step removed is not
  made again (that step would only remove it again), and a step acting on it has nothing
  to do. An image gone otherwise is an error of the step (``NoSuchImage``), unless an
  earlier step made it again.
- ``export`` is skipped when the state records it done and the file is still there with the
  image's size; otherwise the image is exported again (exporting is cheap, and it is the
  way to get the file back). It overwrites a file that it wrote in an earlier run (also of
  another image, after its arguments changed), and any other existing file only with
  ``force: true``, as ``imagerelay export --force``.
- ``wait`` and ``assert`` change nothing. ``assert`` checks the catalog at every run, never
  the run state: one that held before with the same arguments, and still holds with nothing
  changed in this run, is ``skipped`` ("still holds"); an image it names that is gone, or a
  reference to a copy no longer there, fails it (``PlaybookAssertionError``). ``wait`` is
  skipped when the job is over or the image is there and not ``Creating``.
- ``delete`` treats an image the acting account cannot see as gone (the engine answers
  ``NoSuchImage`` for both).

A dry run (``dry_run=True``, ``imagerelay run --dry-run``) resolves every reference,
validates every step against the catalog (regions, accounts, images, files) and reports what
would be done, or redone and why (``would redo: <what drifted>; ...``), without writing
anything: neither the catalog nor the state file. The outputs of steps that would run are
placeholders such as ``<golden.id>`` (of a replicate step that would copy again to one
region, only that region's copy); checks that depend on them are skipped. A dry run sees the
catalog as it is: what an earlier step would change first is not foreseen.

Every error names the playbook file, the line and the step. An error of a step keeps its
class and code (e.g. ``ValidationError`` ``Image.InvalidAccount``) and its message is
prefixed with ``<file>:<line>: step <id or #n> (<kind>): ``.

A playbook is at most 1 MiB and nested at most 64 levels deep; with its aliases expanded
it holds at most 100,000 values and 16 MiB of text, and so may what the ``${...}``
references of one run resolve to. Past that it is a ``PlaybookError``, at once.
"""

# The package: loader (YAML with line numbers and bounds), template (the ${...} language),
# schema (what a playbook and each step kind may hold), state (the run-state file), steps
# (one class per step kind: plan() for a dry run, apply() for a real one), runner (orders
# the steps, fingerprints them against the state, locks the run).
from .book import Playbook, parse_var
from .errors import PlaybookAssertionError, PlaybookError
from .result import DONE as DONE
from .result import DRY_RUN as DRY_RUN
from .result import REDONE as REDONE
from .result import SKIPPED as SKIPPED
from .result import PlaybookResult, StepLog
from .schema import ASSERT_PROPERTIES as ASSERT_PROPERTIES
from .schema import STEP_KINDS
from .schema import Step as Step
from .values import GoneImage, Placeholder

__all__ = [
    "STEP_KINDS", "GoneImage", "Placeholder", "Playbook", "PlaybookAssertionError",
    "PlaybookError", "PlaybookResult", "StepLog", "parse_var",
]
