"""One run of a playbook: its steps in order, each resolved, fingerprinted against the run
state and then planned (dry run) or applied, which skips it only if the world shows it
still done and redoes what drifted; under a lock on the playbook's name."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConflictError, ImageRelayError, ValidationError
from .errors import LimitError, PlaybookAssertionError, PlaybookError, prefixed
from .result import DONE, DRY_RUN, REDONE, SKIPPED, PlaybookResult, StepLog
from .schema import Step, coerce
from .state import RunState, decode_output
from .steps import KINDS, Outcome, StepRun
from .template import Resolver
from .values import Placeholder, describe, describe_output, plain

if TYPE_CHECKING:
    from ..cloud import Cloud
    from .book import Playbook

log = logging.getLogger("imagerelay")


class Runner:
    def __init__(self, book: Playbook, cloud: Cloud, vars: dict[str, Any], *, where: str,
                 account_line: int, dry_run: bool, progress: bool,
                 on_step: Callable[[StepLog], None] | None) -> None:
        self.book = book
        self.base = cloud
        self.where = where  # the playbook file, as errors name it
        self.account_line = account_line
        self.dry_run = dry_run
        self.progress = progress
        self.on_step = on_step
        self.state_path = cloud.home / "playbooks" / f"{book.name}.json"
        self.result = PlaybookResult(book.name, dry_run=dry_run, state_path=self.state_path)
        self.resolver = Resolver(vars, self.result.outputs)
        self.clouds: dict[str, Cloud] = {}
        # False once a step of this run changed something (or, in a dry run, would): the
        # checks (assert, wait) that passed before are then done again.
        self.world_current = True

    def run(self) -> PlaybookResult:
        book = self.book
        where = f"{self.where}:{self.account_line}: "
        try:
            account = self.resolver.resolve(book.account) if book.account else \
                self.base.account
            if not isinstance(account, str) or not account:
                raise ValueError(f"account: expected an account id, got {describe(account)}")
            self.default_cloud = self._cloud_for(account)
        except ImageRelayError as exc:
            raise prefixed(exc, where) from exc
        except ValueError as exc:
            raise PlaybookError(where + str(exc), path=self.where) from exc
        if self.dry_run:
            self.state = RunState(self.state_path, book.name, writable=False)
            self._run_steps()
            return self.result
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_path.with_suffix(".lock")
        with open(lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise ConflictError(f"playbook {book.name!r} is already running in this home "
                                    f"(lock {lock_path}); wait for it to finish",
                                    code="Playbook.AlreadyRunning") from exc
            self.state = RunState(self.state_path, book.name, writable=True)
            self._run_steps()
        return self.result

    def _run_steps(self) -> None:
        log.info("playbook %s: %s%d steps", self.book.name,
                 "dry run, " if self.dry_run else "", len(self.book.steps))
        for step in self.book.steps:
            prefix = f"{self.where}:{step.line}: step {step.key} ({step.kind}): "
            try:
                (output, status, detail, drift), account = self._run_step(step)
            except ImageRelayError as exc:
                raise prefixed(exc, prefix) from exc
            except (ValueError, TypeError) as exc:
                raise PlaybookError(prefix + str(exc), path=self.where, line=step.line,
                                    step=step.key) from exc
            except OSError as exc:
                raise ValidationError(prefix + f"{exc.strerror or exc}: "
                                      f"{exc.filename or ''}".rstrip(": ")) from exc
            if status in (DONE, REDONE, DRY_RUN) and not KINDS[step.kind].checks_only:
                self.world_current = False
            self.result.outputs[step.key] = output
            entry = StepLog(index=step.index, id=step.id, kind=step.kind, status=status,
                            detail=detail, account=account, line=step.line, drift=drift)
            self.result.steps.append(entry)
            log.info("playbook %s: step %s (%s): %s: %s", self.book.name, step.key, step.kind,
                     status, detail)
            if self.on_step is not None:
                self.on_step(entry)

    def _cloud_for(self, account: str) -> Cloud:
        if account not in self.clouds:
            self.clouds[account] = (self.base if account == self.base.account
                                    else self.base.as_account(account))
        return self.clouds[account]

    def _run_step(self, step: Step) -> tuple[Outcome, str]:
        """The step's outcome and the account it acted as."""
        account = self.default_cloud.account
        if step.account is not None:
            resolved = self.resolver.resolve(step.account)
            if isinstance(resolved, Placeholder) or not isinstance(resolved, str) \
                    or not resolved:
                raise ValueError(f"as: must be an account id, got {describe(resolved)}")
            account = resolved
        cloud = self._cloud_for(account)
        try:
            args = {k: coerce(step, k, self.resolver.resolve(v), self.book.base_dir)
                    for k, v in step.args.items()}
        except ValueError as exc:
            # A step can remove what its own arguments point at (``delete:
            # ${copies.copies.gz.id}``: the job no longer lists the copy). If its latest run
            # is done, it stays done.
            record = self.state.latest(step.key)
            if isinstance(exc, LimitError) or not record or record.get("status") != DONE \
                    or record.get("kind") != step.kind:
                raise
            if step.kind == "assert":  # it checks the world: what it names is gone
                raise PlaybookAssertionError(f"{exc}; it held before: what it checks is "
                                             "gone") from exc
            log.warning("playbook %s: step %s: %s; done by an earlier run, so skipped",
                        self.book.name, step.key, exc)
            output = decode_output(cloud, record.get("output") or {})
            return Outcome(output, SKIPPED, f"already done ({describe_output(output)})"), account
        fingerprint = hashlib.sha256(json.dumps(
            {"kind": step.kind, "account": account, "args": plain(args)},
            sort_keys=True).encode()).hexdigest()[:32]
        record, latest = self.state.lookup(step.key, fingerprint)
        run = StepRun(step=step, cloud=cloud, args=args, fingerprint=fingerprint, record=record,
                      latest=latest, state=self.state, playbook=self.book.name,
                      progress=self.progress, world_current=self.world_current,
                      later=tuple(s.key for s in self.book.steps[step.index:]),
                      earlier=tuple(s.key for s in self.book.steps[:step.index - 1]))
        kind = KINDS[step.kind]
        outcome = kind.recorded(run)
        if outcome is None:
            outcome = kind.plan(run) if self.dry_run else kind.apply(run)
        return outcome, account
