"""The Dagster instance of ``DAGSTER_HOME``, checked before a command uses it.

``dagster_home/dagster.yaml`` keeps run history in SQLite files beside it; a shared
instance is ``dagster_home/postgres/dagster.yaml`` (``storage: postgres``, every connection
field from an environment variable), selected by pointing ``DAGSTER_HOME`` at its folder.
Dagster itself, given a PostgreSQL endpoint it cannot use, retries for about ten seconds
and then says only "too many retries for DB connection", for a wrong password or a missing
database too. ``check_instance`` tries one connection first, with a short timeout, and
raises an error naming the endpoint (host, port, database, user) and what is wrong: the
server is unreachable, refused the credentials, or has no such database. The password
appears nowhere: not in the error, not in a log line.

``python -m neuron_assets.instance`` runs the check and says which instance it found (and,
with ``NEURON_ASSETS_DASK_SCHEDULER`` set, how many workers that scheduler has, or why none);
``make dev`` runs it before ``dagster dev``, and ``make demo`` (and the other commands
that record runs in ``DAGSTER_HOME``) through ``instance_for_command``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg

    from neuron_assets.settings import Settings
    from neuron_assets.storage.store import ResultStore

CONNECT_TIMEOUT_S = 5  # where the configuration's params give no connect_timeout


class InstanceStorageError(RuntimeError):
    """The instance's storage cannot be used; the message names the endpoint, never the password."""


@dataclass(frozen=True)
class PostgresEndpoint:
    """Where a PostgreSQL storage of the instance connects; ``password`` is kept out of ``repr``."""

    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False, default="")
    params: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.database} (user {self.user!r})"


def postgres_endpoints(home: str | os.PathLike[str]) -> list[PostgresEndpoint]:
    """The PostgreSQL endpoints the instance in ``home`` stores runs, events or schedules in
    (none for the SQLite default), with their ``env:`` values read from the environment."""
    from dagster._config import process_config
    from dagster._core.instance.ref import InstanceRef
    from dagster._core.storage.config import pg_config

    ref = InstanceRef.from_dir(str(home))
    storages = (ref.storage_data, ref.run_storage_data, ref.event_storage_data, ref.schedule_storage_data)
    configs = []
    for data in storages:
        postgres = data is not None and data.module_name.split(".")[0] == "dagster_postgres"
        if postgres and data.config_dict not in configs:
            configs.append(data.config_dict)
    endpoints = []
    for config in configs:
        unset = sorted({name for name in _env_names(config) if name not in os.environ})
        if unset:
            raise InstanceStorageError(
                f"the PostgreSQL storage in {Path(home) / 'dagster.yaml'} reads {', '.join(unset)} from the "
                f"environment, and {'that is' if len(unset) == 1 else 'those are'} not set here"
            )
        processed = process_config(pg_config(), config)
        if not processed.success:  # a field missing or of the wrong type
            raise InstanceStorageError(
                f"the PostgreSQL storage in {Path(home) / 'dagster.yaml'} is not configured: "
                + "; ".join(error.message.splitlines()[0] for error in processed.errors)
            )
        endpoint = _endpoint(processed.value)
        if endpoint is not None and endpoint not in endpoints:
            endpoints.append(endpoint)
    return endpoints


def _env_names(config: Any) -> list[str]:
    """The environment variables a configuration reads (``{env: NAME}`` values)."""
    if isinstance(config, dict):
        if set(config) == {"env"} and isinstance(config["env"], str):
            return [config["env"]]
        return [name for value in config.values() for name in _env_names(value)]
    return []


def _endpoint(config: dict[str, Any]) -> PostgresEndpoint | None:
    """The endpoint of one resolved ``pg_config``: from ``postgres_db`` or ``postgres_url``."""
    from sqlalchemy.engine import make_url

    if config.get("auth_provider"):  # tokens from a cloud identity: Dagster's own connection is the check
        return None
    db = config.get("postgres_db")
    if db:
        return PostgresEndpoint(
            db["hostname"], int(db["port"]), db["db_name"], db["username"], db.get("password") or "", dict(db["params"])
        )
    url = make_url(config["postgres_url"])
    return PostgresEndpoint(
        url.host or "localhost",
        url.port or 5432,
        url.database or "",
        url.username or "",
        url.password or "",
        dict(url.query),
    )


def check_endpoint(endpoint: PostgresEndpoint) -> None:
    """One connection with a short timeout; raises ``InstanceStorageError`` saying what failed."""
    import psycopg2

    params = {"connect_timeout": CONNECT_TIMEOUT_S, **endpoint.params}
    try:
        connection = psycopg2.connect(
            host=endpoint.host,
            port=endpoint.port,
            dbname=endpoint.database,
            user=endpoint.user,
            password=endpoint.password,
            **params,
        )
    except psycopg2.Error as error:
        reason = _redacted(str(error).strip(), endpoint.password)
        raise InstanceStorageError(
            f"the Dagster instance's PostgreSQL at {endpoint} {_problem(reason, params['connect_timeout'])} "
            f"({' '.join(reason.split())})"
        ) from None
    connection.close()


def _problem(reason: str, timeout: object) -> str:
    lowered = reason.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered or "role " in lowered:
        return "refused the credentials"
    if "database" in lowered and "does not exist" in lowered:
        return "has no such database: create it (createdb) or name another"
    if "timeout expired" in lowered:
        return f"is unreachable: no answer within {timeout} s"
    return "is unreachable"


def _redacted(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def check_instance(home: str | os.PathLike[str] | None = None) -> list[PostgresEndpoint]:
    """Check every PostgreSQL endpoint of the instance in ``home`` (default: ``DAGSTER_HOME``);
    returns them (none for SQLite, or where ``DAGSTER_HOME`` is unset: Dagster says so itself)."""
    home = home if home is not None else os.environ.get("DAGSTER_HOME")
    if not home:
        return []
    endpoints = postgres_endpoints(home)
    for endpoint in endpoints:
        check_endpoint(endpoint)
    return endpoints


def instance_for_command() -> dg.DagsterInstance:
    """``DAGSTER_HOME``'s instance for a command-line entry point, after the check: a failed
    check ends the command with its message (no traceback, nothing written)."""
    import dagster as dg

    try:
        check_instance()
    except InstanceStorageError as error:
        raise SystemExit(str(error)) from None
    return dg.DagsterInstance.get()


def results_for_command(settings: Settings) -> ResultStore:
    """The settings' result store for a command-line entry point: a bucket that cannot be used
    (unreachable, credentials refused, missing) ends the command with its message, before any run."""
    from neuron_assets.storage.object_store import ObjectStoreError

    try:
        return settings.result_store()
    except ObjectStoreError as error:
        raise SystemExit(str(error)) from None


def main() -> int:
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        print("DAGSTER_HOME is not set: Dagster needs it (make sets it to dagster_home/)", file=sys.stderr)
        return 1
    try:
        endpoints = check_instance(home)
    except InstanceStorageError as error:
        print(error, file=sys.stderr)
        return 1
    if endpoints:
        print(f"the Dagster instance in {home}: PostgreSQL at {', '.join(map(str, endpoints))}, connected")
    else:
        print(f"the Dagster instance in {home} has no PostgreSQL storage to check (the default: SQLite files there)")
    scheduler = os.environ.get("NEURON_ASSETS_DASK_SCHEDULER", "").strip()
    if scheduler:
        from neuron_assets.workers import WorkersError, check_workers

        try:
            n_workers = check_workers(scheduler)
        except WorkersError as error:
            print(error, file=sys.stderr)
            return 1
        print(f"the Dask scheduler at {scheduler}: {n_workers} worker{'s' if n_workers != 1 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
