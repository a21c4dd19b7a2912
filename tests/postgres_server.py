"""A real PostgreSQL server for tests: the distribution's binaries, a cluster made by initdb
in a temporary folder, listening on 127.0.0.1 at a free port, with one user and a password.

Debian's ``postgresql`` package puts the binaries in ``/usr/lib/postgresql/<version>/bin``
(not on ``PATH``) and creates the ``postgres`` system user. initdb and the server refuse to
run as root, so where the tests run as root they run as that user; the cluster's folder is
then made outside pytest's temporary folders, which only root may enter. ``Unavailable``
says why no server could be found or started: the tests skip with it, and with nothing else.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from neuron_assets.llm.llama_server import _free_port

BINARIES = ("initdb", "postgres")


class Unavailable(RuntimeError):
    """No PostgreSQL server could be found or started here; the message says why."""


def find_binaries() -> Path:
    """The folder holding initdb and postgres: on ``PATH``, else the newest of Debian's versions."""
    on_path = [shutil.which(name) for name in BINARIES]
    if all(on_path):
        return Path(os.path.realpath(on_path[0])).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    for folder in versions:
        if all((folder / name).exists() for name in BINARIES):
            return folder
    raise Unavailable(
        "no PostgreSQL server binaries (initdb, postgres) on PATH or in /usr/lib/postgresql/*/bin: "
        "apt-get install postgresql (make test does where it can)"
    )


class PostgresServer:
    """``with PostgresServer() as server``: a running server holding ``database``, owned by
    ``user`` (a superuser) with a random ``password``; ``environment()`` gives the
    ``DAGSTER_POSTGRES_*`` variables that dagster_home/postgres/dagster.yaml reads."""

    def __init__(self, user: str = "neuron_assets", database: str = "dagster") -> None:
        self.user, self.database = user, database
        self.password = f"pw-{secrets.token_hex(12)}"  # distinctive: the tests search logs for it
        self.host, self.port = "127.0.0.1", 0
        self.folder: Path | None = None
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _as_server_user(self) -> dict:
        """subprocess arguments that drop root for the ``postgres`` system user (nothing when not root)."""
        if os.geteuid() != 0:
            return {}
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable(
                "the tests run as root, which PostgreSQL refuses, and there is no 'postgres' user to run it as "
                "(the distribution's postgresql package creates one)"
            ) from None
        self._owner = (account.pw_uid, account.pw_gid)
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def start(self) -> None:
        binaries = find_binaries()
        as_server = self._as_server_user()
        self.folder = Path(tempfile.mkdtemp(prefix="neuron-assets-postgres-"))
        if as_server:
            os.chown(self.folder, *self._owner)
        password_file = self.folder / "password"
        password_file.write_text(self.password)
        password_file.chmod(0o600)
        if as_server:
            os.chown(password_file, *self._owner)
        data = self.folder / "data"
        initdb = subprocess.run(
            [binaries / "initdb", "-D", data, "-U", self.user, f"--pwfile={password_file}", "--auth=scram-sha-256"]
            + ["--no-sync", "--no-locale", "--encoding=UTF8"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.folder,
            **as_server,
        )
        password_file.unlink()
        if initdb.returncode != 0:
            raise Unavailable(f"initdb failed ({initdb.returncode}): {(initdb.stdout + initdb.stderr)[-2000:]}")
        self.port = _free_port()
        log = (self.folder / "server.log").open("w")
        self.process = subprocess.Popen(
            [binaries / "postgres", "-D", data, "-h", self.host, "-p", str(self.port), "-k", self.folder]
            + ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
            **as_server,
        )
        log.close()
        self._wait_until_ready(timeout=60)
        connection = self.connect("postgres")
        try:
            connection.autocommit = True
            connection.cursor().execute(f'CREATE DATABASE "{self.database}"')
        finally:
            connection.close()

    def connect(self, database: str | None = None):
        import psycopg2

        return psycopg2.connect(
            host=self.host,
            port=self.port,
            dbname=database or self.database,
            user=self.user,
            password=self.password,
            connect_timeout=5,
        )

    def _wait_until_ready(self, timeout: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise Unavailable(f"the PostgreSQL server exited ({self.process.returncode}): {self.log()[-2000:]}")
            try:
                self.connect("postgres").close()
                return
            except psycopg2.OperationalError as error:
                if time.monotonic() > deadline:
                    raise Unavailable(f"the PostgreSQL server did not answer in {timeout:.0f} s: {error}") from None
            time.sleep(0.1)

    def log(self) -> str:
        path = self.folder / "server.log" if self.folder else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def environment(self, **changes) -> dict[str, str]:
        """The ``DAGSTER_POSTGRES_*`` variables for this server, with ``changes`` (``port=``, ``password=``...)."""
        fields = {
            "host": self.host,
            "port": self.port,
            "db": self.database,
            "user": self.user,
            "password": self.password,
            **changes,
        }
        return {f"DAGSTER_POSTGRES_{name.upper()}": str(value) for name, value in fields.items()}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
