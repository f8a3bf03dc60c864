"""Access keys: the credentials an account signs BCC API requests with (``imagerelay
serve``, bce-auth-v1).

A key is an id (32 lowercase hex digits, as BCC's) and a secret. They are kept as the S3
regions' credentials are (``cpp/src/engine/credentials_files.cpp``): one file per key,
``<home>/access-keys/<key id>.json``, mode 0600, in a directory of mode 0700; never in the
catalog, and never in a log line, an event or an error message. The secret is shown once,
when the key is made.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from .errors import ValidationError

KEY_ID = re.compile(r"[0-9a-f]{32}")
_DIRECTORY = "access-keys"


@dataclasses.dataclass(frozen=True)
class AccessKey:
    """An account's access key. ``secret_access_key`` is given once, by
    ``create_access_key``; listings leave it ``None``."""

    access_key_id: str
    account: str
    created_at: datetime
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)


class AccessKeyFiles:
    """The key files of one home. Every call reads the files afresh, so a key deleted by
    the CLI is refused by a running server at its next request."""

    def __init__(self, home: Path) -> None:
        self.dir = Path(home) / _DIRECTORY
        # lookup()'s cache: file -> ((inode, mtime, size), what it held). A key file is
        # replaced whole (rename), never edited, so a stat tells whether it changed.
        self._seen: dict[Path, tuple[tuple[int, int, int], tuple[AccessKey, str] | None]] = {}

    def create(self, account: str) -> AccessKey:
        key = AccessKey(access_key_id=secrets.token_hex(16), account=account,
                        created_at=datetime.now(timezone.utc),
                        secret_access_key=secrets.token_hex(16))
        self._make_directory()
        text = json.dumps({"access_key_id": key.access_key_id, "account": account,
                           "secret_access_key": key.secret_access_key,
                           "created_at": key.created_at.isoformat()})
        self._write(f"{key.access_key_id}.json", text)
        return key

    def list(self, account: str) -> list[AccessKey]:
        """The account's keys (without their secrets), oldest first."""
        keys = []
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            record = self._read(path)
            if record is not None and record[0].account == account:
                keys.append(record[0])
        return sorted(keys, key=lambda k: (k.created_at, k.access_key_id))

    def delete(self, account: str, key_id: str) -> None:
        found = self.lookup(key_id)
        if found is None or found[0].account != account:
            # Another account's key is "not found" too: its existence is not revealed.
            raise ValidationError(f"account {account} has no access key {key_id}; "
                                  f"`imagerelay accounts keys list {account}` lists its keys",
                                  code="InvalidParameter")
        try:
            (self.dir / f"{key_id}.json").unlink()
        except OSError as e:
            raise ValidationError(f"cannot remove access key {key_id}: {e.strerror}; check "
                                  "the home's permissions", code="InvalidParameter") from None

    def delete_all(self, account: str) -> None:
        """Removes every key of an account (the account is being removed)."""
        for key in self.list(account):
            (self.dir / f"{key.access_key_id}.json").unlink(missing_ok=True)

    def lookup(self, key_id: str) -> tuple[AccessKey, str] | None:
        """(the key, its secret), or None if there is no such key."""
        if not KEY_ID.fullmatch(key_id):  # also keeps the id from naming another file
            return None
        path = self.dir / f"{key_id}.json"
        try:
            st = path.stat()
        except OSError:  # deleted: refused from now on
            self._seen.pop(path, None)
            return None
        version = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._seen.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        found = self._read(path)
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen[path] = (version, found)
        return found

    # -- files ------------------------------------------------------------------------
    def _make_directory(self) -> None:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.dir, 0o700)
        except OSError as e:
            raise ValidationError(f"cannot create the access keys directory {self.dir}: "
                                  f"{e.strerror}; check the home's permissions",
                                  code="InvalidParameter") from None

    def _write(self, name: str, text: str) -> None:
        """Writes the file whole or not at all: a temporary file of mode 0600, synced, then
        renamed over the name."""
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")  # mkstemp: mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / name)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise ValidationError(f"cannot save an access key in {self.dir}: {e.strerror}",
                                  code="InvalidParameter") from None

    @staticmethod
    def _read(path: Path) -> tuple[AccessKey, str] | None:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            key = AccessKey(access_key_id=str(record["access_key_id"]),
                            account=str(record["account"]),
                            created_at=datetime.fromisoformat(record["created_at"]))
            return key, str(record["secret_access_key"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
