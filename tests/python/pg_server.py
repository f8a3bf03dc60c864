"""A throwaway PostgreSQL server for the tests (Debian's ``postgresql`` package).

``initdb`` in a temporary directory, the server on a free port of 127.0.0.1 with its unix
socket in that directory, stopped (and the directory removed) at the end. PostgreSQL refuses
to run as root, so as root the server runs as the ``postgres`` user (created if missing).

As a library: ``with TestServer() as server: server.uri`` (pytest's session fixture).
As a command, around another command (``make test-cpp``)::

    python tests/python/pg_server.py run -- build/editable/imagerelay_tests

runs it with ``IMAGERELAY_TEST_PG`` set to the server's URI (no database in it: each test
creates its own) and stops the server afterwards, whatever the command's outcome.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

ENV = "IMAGERELAY_TEST_PG"
_RUN_AS = "postgres"


def _bin_dir() -> Path | None:
    """The newest installed server's bin directory (/usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def available() -> bool:
    return _bin_dir() is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestServer:
    """One PostgreSQL server; ``uri`` reaches it as its superuser, with no database named."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self._bin = bin_dir
        self._dir = Path(tempfile.mkdtemp(prefix="imagerelay-pg-"))
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = self._system_user()
            os.chmod(self._dir, 0o755)
            os.chown(self._dir, self._user.pw_uid, self._user.pw_gid)
        self.port = _free_port()
        self.superuser = self._user.pw_name if self._user else pwd.getpwuid(os.geteuid()).pw_name
        self.uri = f"postgresql://{self.superuser}@127.0.0.1:{self.port}"
        self._started = False

    @staticmethod
    def _system_user() -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(_RUN_AS)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                            "/usr/sbin/nologin", _RUN_AS], check=True)
            return pwd.getpwnam(_RUN_AS)

    def _run(self, *args: str) -> None:
        def demote() -> None:
            if self._user is not None:
                os.setgid(self._user.pw_gid)
                os.setuid(self._user.pw_uid)

        subprocess.run(list(args), check=True, preexec_fn=demote, cwd=self._dir,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> TestServer:
        data = self._dir / "data"
        try:
            self._run(str(self._bin / "initdb"), "-D", str(data), "-U", self.superuser,
                      "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
            # Fast and small: a test server keeps nothing worth an fsync.
            options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                       f"-c unix_socket_directories={self._dir} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off "
                       "-c max_connections=200 -c shared_buffers=32MB")
            self._run(str(self._bin / "pg_ctl"), "-D", str(data), "-l",
                      str(self._dir / "server.log"), "-o", options, "-w", "-t", "60", "start")
        except subprocess.CalledProcessError as e:
            log = self._dir / "server.log"
            detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            self.stop()
            raise RuntimeError(f"the test PostgreSQL server did not start: "
                               f"{e.stderr.decode(errors='replace') if e.stderr else e}\n{detail}")
        self._started = True
        return self

    def restart(self) -> None:
        """Stops the server (fast: sessions are cut) and starts it again on the same port."""
        self._run(str(self._bin / "pg_ctl"), "-D", str(self._dir / "data"), "-m", "fast",
                  "-w", "-t", "60", "restart")

    def stop(self) -> None:
        if self._started:
            try:
                self._run(str(self._bin / "pg_ctl"), "-D", str(self._dir / "data"), "-m",
                          "immediate", "-w", "-t", "60", "stop")
            except subprocess.CalledProcessError:
                pass
            self._started = False
        shutil.rmtree(self._dir, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name; the URI of it."""
        return create_database(self.uri, name)

    def __enter__(self) -> TestServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def psql(server: str, sql: str, database: str = "postgres") -> str:
    """Runs `sql` on the server's `database` as its superuser; its output (unaligned)."""
    command = [shutil.which("psql") or "/usr/bin/psql", f"{server}/{database}", "-qAtX",
               "-v", "ON_ERROR_STOP=1", "-c", sql]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def create_database(server: str, name: str) -> str:
    """CREATE DATABASE name on the server at `server`; the URI of it."""
    psql(server, f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "run" or "--" not in argv:
        print("usage: pg_server.py run -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1:]
    if not available():
        print("pg_server.py: PostgreSQL is not installed; running without it", file=sys.stderr)
        return subprocess.call(command)
    with TestServer() as server:
        return subprocess.call(command, env=dict(os.environ, **{ENV: server.uri}))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
