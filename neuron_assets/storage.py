"""Results on disk: one Parquet file per table and layer partition, DuckDB views over them.

DuckDB allows one writing process per database file, and researchers keep a session
open on their results while a backfill runs. So the pipeline never writes table data
into the DuckDB file: each partition is a Parquet file replaced atomically (write to a
temporary file, then rename), which makes a re-run replace rows instead of adding them
and leaves the previous file whole if a run fails. ``results.duckdb`` holds only views
over ``<table>/*.parquet``, so new partitions show up in an open session without any
write to the database file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import polars as pl

from neuron_assets.schemas import TABLES, validate

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
UNPARTITIONED = "all"


class ResultStore:
    """Reads and writes validated tables under ``root``; ``root/results.duckdb`` holds the views."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    @property
    def database(self) -> Path:
        return self.root / "results.duckdb"

    def path(self, table: str, partition: str | None = None) -> Path:
        return self.root / table / f"{partition if partition is not None else UNPARTITIONED}.parquet"

    def write(self, table: str, frame: pl.DataFrame, partition: str | None = None) -> Path:
        """Validate, then atomically replace the table's file for this partition."""
        frame = validate(table, frame)
        target = self.path(table, partition)
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

    def read(self, table: str, partitions: list[str] | None = None) -> pl.DataFrame:
        """Read (and validate) the given partitions, or the unpartitioned file when ``None``."""
        paths = [self.path(table, p) for p in (partitions if partitions is not None else [None])]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"table {table!r} has not been materialized: missing {missing}")
        columns = set(TABLES[table].to_schema().columns)
        for path in paths:
            absent = sorted(columns - set(pl.read_parquet_schema(path)))
            if absent:
                raise ValueError(
                    f"{path} was written by an older version of neuron-assets (no column {', '.join(absent)}); "
                    f"materialize partition {path.stem} of {table!r} again"
                )
        return validate(table, pl.concat([pl.read_parquet(p) for p in paths], how="vertical"))

    def partitions(self, table: str) -> list[str]:
        return sorted(p.stem for p in (self.root / table).glob("*.parquet"))

    def refresh_views(self) -> list[str]:
        """(Re)create the DuckDB views for every table that has data; returns the views created.

        Raises ``duckdb.IOException`` when another process holds the database file; the data
        is already on disk then and existing views pick it up.
        """
        import duckdb

        self.root.mkdir(parents=True, exist_ok=True)
        created: list[str] = []
        with duckdb.connect(str(self.database)) as connection:
            for table in TABLES:
                if self.partitions(table):
                    glob = (self.root / table / "*.parquet").as_posix()
                    connection.execute(
                        f"CREATE OR REPLACE VIEW {table} AS "
                        f"SELECT *{self._absent_columns(table)} FROM read_parquet('{glob}', union_by_name = true)"
                    )
                    created.append(table)
            statements = view_statements()
            names = [*TABLES, *(name for name, _ in statements)]
            for name, statement in statements:
                if all(t in created for t in _relations_used(statement, names, name)):
                    connection.execute(statement)
                    created.append(name)
        return created


    def _absent_columns(self, table: str) -> str:
        """``, NULL AS col`` for each column of the table's model that no stored partition has.

        Partitions written by an older version lack newer columns; the view still offers
        every column (NULL there), so the derived views and queries keep working.
        """
        present: set[str] = set()
        for path in (self.root / table).glob("*.parquet"):
            present.update(pl.read_parquet_schema(path))
        return "".join(f", NULL AS {column}" for column in TABLES[table].to_schema().columns if column not in present)


def sql_statements(file_name: str) -> list[str]:
    """The semicolon-separated statements of ``sql/<file_name>``, comment lines removed."""
    lines = (SQL_DIR / file_name).read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in lines if not line.strip().startswith("--"))
    return [chunk.strip() for chunk in text.split(";") if chunk.strip()]


def view_statements() -> list[tuple[str, str]]:
    """The derived views of ``sql/views.sql``, as (view name, statement), in file order."""
    return [(body.split("VIEW", 1)[1].split()[0], body) for body in sql_statements("views.sql")]


def _relations_used(statement: str, names: list[str], defined: str) -> list[str]:
    """The tables and views among ``names`` that ``statement`` reads (other than the one it defines)."""
    words = set(statement.replace("(", " ").replace(")", " ").replace(",", " ").split())
    return [name for name in names if name in words and name != defined]
