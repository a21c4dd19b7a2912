"""Results on disk: one Parquet file per table, experiment and layer partition, DuckDB views over them.

A file's place is ``<table>/<subject model>/[<variant>/]<layer>.parquet``: the Dagster asset
key's prefix (see ``defs.experiments``) names the subject model, and for the LLM stages the
variant, so results of different models and configurations stay side by side.

DuckDB allows one writing process per database file, and researchers keep a session
open on their results while a backfill runs. So the pipeline never writes table data
into the DuckDB file: each partition is a Parquet file replaced atomically (write to a
temporary file, then rename), which makes a re-run replace rows instead of adding them
and leaves the previous file whole if a run fails. ``results.duckdb`` holds only views
over ``<table>/*.parquet`` (and the statements that define them), so new partitions show
up in an open session without any write to the database file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

import polars as pl

from neuron_assets.storage.schemas import MODEL_TABLES, TABLES, validate

# The top-level sql/ folder, read as package data: neuron_assets/sql links to it in a checkout
# (and so in the editable install), and a wheel holds a copy of its files.
SQL = files("neuron_assets") / "sql"
UNPARTITIONED = "all"
VIEWS_TABLE = "neuron_assets_views"  # the view statements in force, to refresh only what changed
# Columns added after results were first stored, with the value every older row has: all
# results before the negative side was recorded are of the positive side, all results
# before variants existed are of the default variant, and the settings of runs before
# settings were recorded are unknown (null).
DEFAULT_VARIANT = "default"
OLDER_FILES_MEAN = {
    "polarity": "positive",
    "variant": DEFAULT_VARIANT,
    "run_settings": None,
    "overridden_settings": None,
    "scorer": "simulation",  # puzzle scores from before the classifier scorers
    "metric": None,
}


class ResultStore:
    """Reads and writes validated tables under ``root``; ``root/results.duckdb`` holds the views."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        if "?" in str(self.root):
            raise ValueError(
                f"{self.root} cannot hold results: DuckDB reads '?' in a database path as the start of "
                f"connection options; choose a data directory (NEURON_ASSETS_DATA_DIR) without '?'"
            )

    @property
    def database(self) -> Path:
        return self.root / "results.duckdb"

    def path(self, table: str, partition: str | None = None, prefix: Sequence[str] = ()) -> Path:
        """``<table>/<prefix...>/<partition>.parquet``; ``prefix`` is the asset key's (subject model, variant)."""
        return self.root.joinpath(table, *prefix, f"{partition if partition is not None else UNPARTITIONED}.parquet")

    def write(self, table: str, frame: pl.DataFrame, partition: str | None = None, prefix: Sequence[str] = ()) -> Path:
        """Validate, then atomically replace the table's file for this partition."""
        frame = validate(table, frame)
        target = self.path(table, partition, prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".tmp")
        os.close(handle)
        try:
            frame.write_parquet(temporary)
            os.chmod(temporary, 0o644)  # mkstemp creates 0600; results are meant to be shared
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target

    def read(self, table: str, partitions: list[str] | None = None, prefix: Sequence[str] = ()) -> pl.DataFrame:
        """Read (and validate) the given partitions, or the unpartitioned file when ``None``."""
        paths = [self.path(table, p, prefix) for p in (partitions if partitions is not None else [None])]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"table {table!r} has not been materialized: missing {missing}")
        columns = set(TABLES[table].to_schema().columns)
        frames = []
        for path in paths:
            absent = columns - parquet_columns(path)
            if absent - set(OLDER_FILES_MEAN):
                raise ValueError(
                    f"{path} was written by an older version of neuron-assets (no column "
                    f"{', '.join(sorted(absent - set(OLDER_FILES_MEAN)))}); "
                    f"materialize partition {path.stem} of {table!r} again"
                )
            frame = pl.read_parquet(path, glob=False)
            types = {c: TABLES[table].to_schema().columns[c].dtype.type for c in absent}
            frames.append(
                frame.with_columns(pl.lit(OLDER_FILES_MEAN[c], dtype=types[c]).alias(c) for c in sorted(absent))
            )
        return validate(table, pl.concat([f.select(frames[0].columns) for f in frames], how="vertical"))

    def partitions(self, table: str, prefix: Sequence[str] = ()) -> list[str]:
        return sorted(p.stem for p in self.root.joinpath(table, *prefix).glob("*.parquet"))

    def has_results(self, table: str) -> bool:
        """Whether any experiment has a file of ``table``."""
        return next((self.root / table).glob("**/*.parquet"), None) is not None

    def migrate_old_layout(self) -> list[Path]:
        """Move files of the layout before experiments (``<table>/<layer>.parquet``) to their place.

        They all belong to the one subject model that cut the stored excerpts, and to the
        default variant; columns they lack (``subject_model``, ``variant``) are added with
        those values. Each file is written whole at its new place before the old one goes,
        so an interrupted migration loses nothing and the next one finishes it.
        """
        from neuron_assets.storage.layout import model_slug, prefix

        old = [p for table in MODEL_TABLES for p in sorted((self.root / table).glob("*.parquet"))]
        if not old:
            return []
        excerpts = self.root / "excerpts" / f"{UNPARTITIONED}.parquet"
        try:
            subject_model = self._old_subject_model(excerpts)
        except ValueError:
            if not any(path.exists() for path in old):
                return []  # a parallel run moved them all meanwhile
            raise
        moved = []
        for path in old:
            table = path.parent.name
            folders = prefix(model_slug(subject_model), DEFAULT_VARIANT, table)
            try:
                frame = pl.read_parquet(path, glob=False)
            except FileNotFoundError:
                continue  # another process (a parallel run) moved it first
            wanted = TABLES[table].to_schema().columns
            added = {"subject_model": subject_model, "variant": DEFAULT_VARIANT}
            frame = frame.with_columns(
                pl.lit(v).alias(c) for c, v in added.items() if c in wanted and c not in frame.columns
            )
            target = self.path(table, path.stem, folders)
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".migrating")
            os.close(handle)
            frame.write_parquet(temporary)
            os.chmod(temporary, 0o644)  # as write() leaves results: shared
            os.replace(temporary, target)
            path.unlink(missing_ok=True)
            moved.append(target)
        return moved

    def _old_subject_model(self, excerpts: Path) -> str:
        if not excerpts.exists():
            raise ValueError(
                f"{self.root} holds results in the layout before experiments but no {excerpts} naming their "
                f"subject model; move each <table>/<layer>.parquet to <table>/<model>/[default/]<layer>.parquet"
            )
        return pl.read_parquet(excerpts, columns=["subject_model"], glob=False)["subject_model"][0]

    def view_definitions(self) -> dict[str, str]:
        """Every view the stored tables allow, as name -> ``CREATE OR REPLACE VIEW`` statement.

        A table's view exists once it has a partition; a derived view of ``sql/views.sql``
        once every relation it reads exists. Paths reach SQL only as escaped literals.
        """
        definitions: dict[str, str] = {}
        for table in TABLES:
            if self.has_results(table):
                files = sql_string(escape_glob((self.root / table).as_posix()) + "/**/*.parquet")
                definitions[table] = (
                    f"CREATE OR REPLACE VIEW {sql_identifier(table)} AS "
                    f"SELECT *{self._absent_columns(table)} FROM read_parquet({files}, union_by_name = true)"
                )
        statements = view_statements()
        names = [*TABLES, *(name for name, _ in statements)]
        for name, statement in statements:
            if all(t in definitions for t in _relations_used(statement, names, name)):
                definitions[name] = statement
        return definitions

    def refresh_views(self) -> list[str]:
        """Create the views that are new or whose definition changed; returns their names.

        The views read ``<table>/*.parquet``, so a new partition needs no refresh; only a new
        table or view, or a changed definition (new columns, an edited ``views.sql``), does.
        The statements in force are kept in the database (``neuron_assets_views``) and
        compared through a read-only connection, so the common case takes no write lock.
        Raises ``duckdb.IOException`` when something changed but another process holds the
        database file; the data is on disk then and existing views already read it.
        """
        import duckdb

        wanted, in_force = self.view_definitions(), self._views_in_force()
        changed: list[str] = []  # a view is rewritten when it, or anything it reads, changed
        for name, statement in wanted.items():
            if in_force.get(name) != statement or set(_relations_used(statement, list(wanted), name)) & set(changed):
                changed.append(name)
        if not changed:
            return []
        self.root.mkdir(parents=True, exist_ok=True)
        with duckdb.connect(str(self.database)) as connection:
            connection.execute(
                f"CREATE TABLE IF NOT EXISTS {VIEWS_TABLE} (name VARCHAR PRIMARY KEY, statement VARCHAR)"
            )
            for name, statement in wanted.items():  # in dependency order: a view after what it reads
                if name in changed:
                    connection.execute(statement)
                    connection.execute(f"INSERT OR REPLACE INTO {VIEWS_TABLE} VALUES (?, ?)", [name, statement])
        return changed

    def _views_in_force(self) -> dict[str, str]:
        """The view statements last written to the database (empty when it cannot be read)."""
        import duckdb

        if not self.database.exists():
            return {}
        try:
            with duckdb.connect(str(self.database), read_only=True) as connection:
                return dict(connection.execute(f"SELECT name, statement FROM {VIEWS_TABLE}").fetchall())
        except (duckdb.IOException, duckdb.CatalogException):
            return {}  # locked by a writer, or written before views were tracked: rewrite

    def _absent_columns(self, table: str) -> str:
        """``, NULL AS col`` for each column of the table's model that no stored partition has.

        Partitions written by an older version lack newer columns; the view still offers
        every column (NULL there, or the value older rows mean: ``OLDER_FILES_MEAN``), so the
        derived views and queries keep working.
        """
        present: set[str] = set()
        for path in (self.root / table).glob("**/*.parquet"):
            present.update(parquet_columns(path))
        columns = TABLES[table].to_schema().columns
        return "".join(
            f", {'NULL' if OLDER_FILES_MEAN.get(c) is None else sql_string(OLDER_FILES_MEAN[c])} AS {sql_identifier(c)}"
            for c in columns
            if c not in present
        )


def parquet_columns(path: Path) -> set[str]:
    """The column names of a Parquet file (its path taken literally, never as a glob)."""
    return set(pl.scan_parquet(path, glob=False).collect_schema().names())


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal: any quote in a user's path is doubled, never closes it."""
    return "'" + text.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def escape_glob(path: str) -> str:
    """``path`` with DuckDB's glob characters made literal, so a folder named ``a[1]*`` is read as such."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)


def sql_statements(file_name: str) -> list[str]:
    """The semicolon-separated statements of ``sql/<file_name>``, comment lines removed."""
    lines = SQL.joinpath(file_name).read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in lines if not line.strip().startswith("--"))
    return [chunk.strip() for chunk in text.split(";") if chunk.strip()]


def view_statements() -> list[tuple[str, str]]:
    """The derived views of ``sql/views.sql``, as (view name, statement), in file order."""
    return [(body.split("VIEW", 1)[1].split()[0], body) for body in sql_statements("views.sql")]


def _relations_used(statement: str, names: list[str], defined: str) -> list[str]:
    """The tables and views among ``names`` that ``statement`` reads (other than the one it defines)."""
    words = set(statement.replace("(", " ").replace(")", " ").replace(",", " ").split())
    return [name for name in names if name in words and name != defined]
