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

The tables can live on S3-compatible object storage instead (``s3://bucket/prefix``, see
``storage.object_store``): each partition is then one object, uploaded whole from memory, which
S3 makes visible all at once or not at all, so a reader never sees half of one. The DuckDB file
cannot live in a bucket: it stays in a local folder (``local_dir``), beside the response cache,
and its views read the bucket through the filesystem ``connect`` registers.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import IO, Any

import polars as pl

from neuron_assets.storage.object_store import (
    SCHEME,
    check_bucket,
    filesystem,
    is_object_store,
    split_location,
    upload_object,
)
from neuron_assets.storage.schemas import MODEL_TABLES, TABLES, polars_schema, validate

# The top-level sql/ folder, read as package data: neuron_assets/sql links to it in a checkout
# (and so in the editable install), and a wheel holds a copy of its files.
SQL = files("neuron_assets") / "sql"
UNPARTITIONED = "all"
# Rows per Parquet row group: small enough that a query for one neuron (the viewer's neuron page)
# reads a few groups of a layer's file, by their min/max statistics, instead of the whole file.
ROW_GROUP_ROWS = 8_192
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
    """Reads and writes validated tables under ``root``: a local folder, or ``s3://bucket/prefix``.

    ``root`` (a ``Path``) is the local folder: the tables', or for a bucket the one that holds
    ``results.duckdb`` and the response cache (``local_dir``; by default
    ``data/s3/<bucket>/<prefix>`` under the working directory). ``location`` is where the
    tables are, as DuckDB reads it.
    """

    def __init__(self, root: str | Path, local_dir: str | Path | None = None) -> None:
        self.remote = is_object_store(root)
        if self.remote:
            bucket, key_prefix = split_location(str(root))
            self._base = f"{bucket}/{key_prefix}".rstrip("/")  # the filesystem's key of the tables' folder
            self.location = SCHEME + self._base
            self.fs = filesystem()
            check_bucket(self.fs, self.location)
            self._etags: dict[str, str] = {}  # object key -> its ETag at the last listing
            self._columns_of: dict[tuple[str, str | None], frozenset[str]] = {}  # (key, ETag) -> columns
            self.root = Path(local_dir or Path("data", "s3", bucket, key_prefix)).resolve()
        else:
            self.root = Path(root).resolve()
            self.location = self.root.as_posix()
        if "?" in str(self.root):
            raise ValueError(
                f"{self.root} cannot hold results: DuckDB reads '?' in a database path as the start of "
                f"connection options; choose a data directory (NEURON_ASSETS_DATA_DIR) without '?'"
            )

    @property
    def database(self) -> Path:
        return self.root / "results.duckdb"

    def connect(self, read_only: bool = True) -> Any:
        """A DuckDB connection to ``results.duckdb`` whose views can read the tables (for a bucket,
        its filesystem registered: a connection without it cannot read them)."""
        import duckdb

        connection = duckdb.connect(str(self.database), read_only=read_only)
        if self.remote:
            connection.register_filesystem(self.fs)
        return connection

    def path(self, table: str, partition: str | None = None, prefix: Sequence[str] = ()) -> Path:
        """``<table>/<prefix...>/<partition>.parquet``; ``prefix`` is the asset key's (subject model, variant).
        A local store's only: a bucket's objects have ``url``."""
        if self.remote:
            raise ValueError(f"{self.location} is object storage: its files have URLs (ResultStore.url), not paths")
        return self.root.joinpath(table, *prefix, f"{partition if partition is not None else UNPARTITIONED}.parquet")

    def url(self, table: str, partition: str | None = None, prefix: Sequence[str] = ()) -> str:
        """Where the partition's file is, as DuckDB and the run's metadata name it."""
        if not self.remote:
            return self.path(table, partition, prefix).as_posix()
        return SCHEME + self._key(table, partition, prefix)

    def _key(self, table: str, partition: str | None, prefix: Sequence[str]) -> str:
        return "/".join(
            [self._base, table, *prefix, f"{partition if partition is not None else UNPARTITIONED}.parquet"]
        )

    def write(self, table: str, frame: pl.DataFrame, partition: str | None = None, prefix: Sequence[str] = ()) -> str:
        """Validate, then atomically replace the table's file for this partition; returns its ``url``."""
        frame = validate(table, frame)
        if self.remote:
            buffer = io.BytesIO()
            frame.write_parquet(buffer, row_group_size=ROW_GROUP_ROWS)
            upload_object(self.fs, self._key(table, partition, prefix), buffer.getvalue())
            return self.url(table, partition, prefix)
        target = self.path(table, partition, prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".tmp")
        os.close(handle)
        try:
            frame.write_parquet(temporary, row_group_size=ROW_GROUP_ROWS)
            os.chmod(temporary, 0o644)  # mkstemp creates 0600; results are meant to be shared
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target.as_posix()

    def read(self, table: str, partitions: list[str] | None = None, prefix: Sequence[str] = ()) -> pl.DataFrame:
        """Read (and validate) the given partitions, or the unpartitioned file when ``None``."""
        wanted = partitions if partitions is not None else [None]
        stored = set(self.partitions(table, prefix))
        missing = [self.url(table, p, prefix) for p in wanted if (p if p is not None else UNPARTITIONED) not in stored]
        if missing:
            raise FileNotFoundError(f"table {table!r} has not been materialized: missing {missing}")
        columns = set(TABLES[table].to_schema().columns)
        frames = []
        for partition in wanted:
            source = self._source(table, partition, prefix)
            absent = columns - parquet_columns(source)
            if absent - set(OLDER_FILES_MEAN):
                raise ValueError(
                    f"{self.url(table, partition, prefix)} was written by an older version of neuron-assets (no "
                    f"column {', '.join(sorted(absent - set(OLDER_FILES_MEAN)))}); "
                    f"materialize partition {partition or UNPARTITIONED} of {table!r} again"
                )
            if isinstance(source, io.BytesIO):
                source.seek(0)
            frame = pl.read_parquet(source, glob=False)
            types = {c: TABLES[table].to_schema().columns[c].dtype.type for c in absent}
            frames.append(
                frame.with_columns(pl.lit(OLDER_FILES_MEAN[c], dtype=types[c]).alias(c) for c in sorted(absent))
            )
        return validate(table, pl.concat([f.select(frames[0].columns) for f in frames], how="vertical"))

    def scan(self, table: str, partitions: Sequence[str | None], prefix: Sequence[str] = ()) -> str:
        """SQL for ``table``'s given partitions (``None``: the unpartitioned file) as one relation with
        every column of its model, for a connection from ``query_connection``: DuckDB then reads only
        the columns a query names, and skips the row groups its filters rule out. A column that older
        files lack holds the value their rows mean (``OLDER_FILES_MEAN``), as in the views; one with
        no such value is a ``ValueError`` saying to materialize the files again."""
        names = ["/".join([*prefix, f"{p if p is not None else UNPARTITIONED}.parquet"]) for p in partitions]
        present = self._present_columns(table, names)
        lacking = sorted(set(TABLES[table].to_schema().columns) - present - set(OLDER_FILES_MEAN))
        if lacking:
            raise ValueError(
                f"{table!r} of {'/'.join(prefix)} was written by an older version of neuron-assets (no column "
                f"{', '.join(lacking)}); materialize it again"
            )
        urls = ", ".join(sql_string(escape_glob(self.url(table, p, prefix))) for p in partitions)
        return f"(SELECT *{self._defaults_sql(table, present)} FROM read_parquet([{urls}], union_by_name = true))"

    def signature(self, table: str, partitions: Sequence[str | None], prefix: Sequence[str] = ()) -> tuple:
        """What changes when any of the partitions' files is replaced: size and modification time of
        each local file, the ETag of each object (one listing of the table's folder)."""
        if not self.remote:
            stats = [self.path(table, p, prefix).stat() for p in partitions]
            return tuple((s.st_size, s.st_mtime_ns, s.st_ino) for s in stats)
        listing = {entry["name"]: entry for entry in self.fs.ls("/".join([self._base, table, *prefix]), detail=True)}
        return tuple(str(listing[self._key(table, p, prefix)].get("ETag")) for p in partitions)

    def query_connection(self) -> Any:
        """An in-memory DuckDB connection that can read the tables (never ``results.duckdb``, which
        a run may be writing views into)."""
        import duckdb

        connection = duckdb.connect()
        if self.remote:
            connection.register_filesystem(self.fs)
        return connection

    def select(
        self,
        table: str,
        partitions: Sequence[str | None],
        prefix: Sequence[str] = (),
        where: str = "true",
        parameters: Sequence[Any] = (),
        columns: Sequence[str] | None = None,
    ) -> pl.DataFrame:
        """The rows of ``table``'s partitions that the SQL condition ``where`` keeps (values as ``?``
        ``parameters``), all columns or ``columns``, validated against the table's model: DuckDB reads
        only those columns, and only the row groups the condition can match."""
        model = TABLES[table].to_schema()
        wanted = list(model.columns) if columns is None else list(columns)
        selected = ", ".join(sql_identifier(c) for c in wanted)
        with self.query_connection() as connection:
            frame = connection.sql(
                f"SELECT {selected} FROM {self.scan(table, partitions, prefix)} WHERE {where}", params=list(parameters)
            ).pl()
        types = polars_schema(TABLES[table], wanted)  # a default of NULL comes back untyped
        frame = frame.with_columns(pl.col(c).cast(types[c]) for c in wanted if frame.schema[c] == pl.Null)
        return model.select_columns(wanted).validate(frame)

    def _source(self, table: str, partition: str | None, prefix: Sequence[str]) -> Path | io.BytesIO:
        """What polars reads a partition from: its local path, or its object's bytes (fetched once)."""
        if not self.remote:
            return self.path(table, partition, prefix)
        return io.BytesIO(self.fs.cat_file(self._key(table, partition, prefix)))

    def partitions(self, table: str, prefix: Sequence[str] = ()) -> list[str]:
        if not self.remote:
            return sorted(p.stem for p in self.root.joinpath(table, *prefix).glob("*.parquet"))
        folder = "/".join([self._base, table, *prefix])
        try:
            names = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        return sorted(name.rsplit("/", 1)[-1].removesuffix(".parquet") for name in names if name.endswith(".parquet"))

    def folders(self, table: str) -> list[tuple[str, ...]]:
        """Each prefix (subject model folder, and variant for an LLM stage) that holds a file of ``table``."""
        return sorted({tuple(Path(name).parent.parts) for name in self._files(table)})

    def has_results(self, table: str) -> bool:
        """Whether any experiment has a file of ``table``."""
        return bool(self._files(table))

    def _files(self, table: str) -> list[str]:
        """Every Parquet file of ``table``, relative to its folder (``model/variant/3.parquet``)."""
        if not self.remote:
            folder = self.root / table
            return [p.relative_to(folder).as_posix() for p in folder.glob("**/*.parquet")]
        folder = f"{self._base}/{table}"  # this table's objects only, not the whole prefix
        return [key.removeprefix(folder + "/") for key in self.fs.find(folder) if key.endswith(".parquet")]

    def _files_by_table(self) -> dict[str, list[str]]:
        """Every Parquet file of every table, relative to the table's folder. For a bucket this is
        one listing of the whole prefix (each object's ETag kept, to know its columns unchanged)."""
        if not self.remote:
            return {table: files for table in TABLES if (files := self._files(table))}
        found: dict[str, list[str]] = {}
        for key, entry in self.fs.find(self._base, detail=True).items():
            table, _, name = key.removeprefix(self._base + "/").partition("/")
            if name.endswith(".parquet") and table in TABLES:
                found.setdefault(table, []).append(name)
                self._etags[key] = str(entry.get("ETag") or entry.get("LastModified"))
        return found

    def migrate_old_layout(self) -> list[Path]:
        """Move files of the layout before experiments (``<table>/<layer>.parquet``) to their place.

        They all belong to the one subject model that cut the stored excerpts, and to the
        default variant; columns they lack (``subject_model``, ``variant``) are added with
        those values. Each file is written whole at its new place before the old one goes,
        so an interrupted migration loses nothing and the next one finishes it.
        """
        from neuron_assets.storage.layout import model_slug, prefix

        if self.remote:
            return []  # that layout was never written to a bucket
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
            frame.write_parquet(temporary, row_group_size=ROW_GROUP_ROWS)
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
        stored = self._files_by_table()
        for table in TABLES:
            if stored.get(table):
                files = sql_string(escape_glob(f"{self.location}/{table}") + "/**/*.parquet")
                absent = self._absent_columns(table, stored[table])
                definitions[table] = (
                    f"CREATE OR REPLACE VIEW {sql_identifier(table)} AS "
                    f"SELECT *{absent} FROM read_parquet({files}, union_by_name = true)"
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

        wanted, in_force = self.view_definitions(), self._views_in_force()
        changed: list[str] = []  # a view is rewritten when it, or anything it reads, changed
        for name, statement in wanted.items():
            if in_force.get(name) != statement or set(_relations_used(statement, list(wanted), name)) & set(changed):
                changed.append(name)
        if not changed:
            return []
        self.root.mkdir(parents=True, exist_ok=True)
        with self.connect(read_only=False) as connection:
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
            with self.connect() as connection:
                return dict(connection.execute(f"SELECT name, statement FROM {VIEWS_TABLE}").fetchall())
        except (duckdb.IOException, duckdb.CatalogException):
            return {}  # locked by a writer, or written before views were tracked: rewrite

    def _absent_columns(self, table: str, names: list[str]) -> str:
        """``, NULL AS col`` for each column of the table's model that no stored partition has.

        Partitions written by an older version lack newer columns; the view still offers
        every column (NULL there, or the value older rows mean: ``OLDER_FILES_MEAN``), so the
        derived views and queries keep working.
        """
        return self._defaults_sql(table, self._present_columns(table, names))

    def _present_columns(self, table: str, names: list[str]) -> set[str]:
        """The columns any of ``table``'s files ``names`` (relative to its folder) has, from their footers.
        An object's are kept by its ETag where the last listing gave one (``_files_by_table``)."""
        present: set[str] = set()
        for name in names:
            if self.remote:
                key = f"{self._base}/{table}/{name}"
                etag = self._etags.get(key)
                known = self._columns_of.get((key, etag)) if etag is not None else None
                if known is None:
                    with self.fs.open(key, "rb", cache_type="readahead") as file:  # reads the footer only
                        known = frozenset(parquet_columns(file))
                    if etag is not None:
                        self._columns_of[(key, etag)] = known
                present.update(known)
            else:
                present.update(parquet_columns(self.root / table / name))
        return present

    def _defaults_sql(self, table: str, present: set[str]) -> str:
        """``, <value> AS col`` for each column of the table's model not in ``present``."""
        columns = TABLES[table].to_schema().columns
        return "".join(
            f", {'NULL' if OLDER_FILES_MEAN.get(c) is None else sql_string(OLDER_FILES_MEAN[c])} AS {sql_identifier(c)}"
            for c in columns
            if c not in present
        )


def parquet_columns(source: Path | IO[bytes]) -> set[str]:
    """The column names of a Parquet file (a path taken literally, never as a glob, or an open file)."""
    if isinstance(source, Path):
        return set(pl.scan_parquet(source, glob=False).collect_schema().names())
    return set(pl.read_parquet_schema(source))


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
