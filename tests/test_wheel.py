"""A wheel (``pip install .``, not editable) is a working code location.

The wheel is built from a copy of the checkout, installed with ``--target`` into a temporary
folder and imported from there in a fresh interpreter whose working directory is outside the
repository; ``-I`` keeps the checkout (the current directory, ``PYTHONPATH``) off its path, and
the installed copy goes first on it, ahead of the editable install's finder, which is asserted.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from neuron_assets.puzzles.puzzle_file import load_puzzles
from neuron_assets.storage.schemas import TABLES
from neuron_assets.storage.store import sql_statements, view_statements

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", ".wheels", "build", "data", "dagster_home", "*.egg-info", "__pycache__", ".pytest_cache"
)

# Run in the installed copy: what it imports, and what its packaged SQL and puzzle file give.
INSTALLED = """
import json, sys
from pathlib import Path
site = sys.argv[1]
sys.path.insert(0, site)
import polars as pl
import neuron_assets
from neuron_assets.defs.definitions import defs
from neuron_assets.puzzles.puzzle_file import OUR_PUZZLES, load_puzzles
from neuron_assets.storage import store
from neuron_assets.storage.schemas import TABLES

graph = defs.resolve_asset_graph()
results = store.ResultStore(sys.argv[2])
for table, model in TABLES.items():  # an empty partition of every table, so every view has what it reads
    empty = pl.DataFrame(schema={c: column.dtype.type for c, column in model.to_schema().columns.items()})
    results.write(table, empty, "0", ("m", "default"))
created = results.refresh_views()
import duckdb
with duckdb.connect(str(results.database), read_only=True) as connection:
    rows = {name: connection.sql(f'SELECT count(*) FROM "{name}"').fetchall()[0][0] for name in created}
print(json.dumps({
    "package": neuron_assets.__file__,
    "modules": sorted({m.__file__ for n, m in sys.modules.items() if n.startswith("neuron_assets") and m.__file__}),
    "sql": str(store.SQL.joinpath("views.sql")),
    "assets": sorted(k.to_user_string() for k in graph.get_all_asset_keys()),
    "views": [name for name, _ in store.view_statements()],
    "examples": store.sql_statements("examples.sql"),
    "created": created,
    "rows": rows,
    "puzzle_file": str(OUR_PUZZLES),
    "puzzles": [p.name for p in load_puzzles()],
}))
"""


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_a_wheel_installed_elsewhere_loads_the_definitions_creates_the_views_and_reads_the_puzzles(tmp_path):
    source, dist, site, outside = (tmp_path / name for name in ("source", "dist", "site", "outside"))
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SOURCES)  # an in-tree build writes build/
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(source))
    (wheel,) = dist.glob("neuron_assets-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"neuron_assets/sql/{p.name}" for p in (REPO / "sql").glob("*.sql")} <= set(names)
    assert "neuron_assets/puzzles/neuron_puzzles.json" in names
    assert all(n.startswith(("neuron_assets/", "neuron_assets-")) for n in names), names

    run(*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel))
    outside.mkdir()
    env = {
        **os.environ,
        "NEURON_ASSETS_DATA_DIR": str(outside / "data"),
        "DAGSTER_HOME": str(outside),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    done = run(
        sys.executable, "-I", "-W", "ignore", "-c", INSTALLED, str(site), str(outside / "results"), cwd=outside, env=env
    )
    installed = json.loads(done.stdout.strip().splitlines()[-1])

    site_root = str(site.resolve()) + os.sep
    assert installed["package"].startswith(site_root), installed["package"]
    assert all(m.startswith(site_root) for m in installed["modules"]), installed["modules"]
    assert installed["sql"].startswith(site_root), installed["sql"]
    assert {key.split("/")[-1] for key in installed["assets"]} == set(TABLES)  # an asset per table
    assert installed["views"] == [name for name, _ in view_statements()]
    assert installed["examples"] == sql_statements("examples.sql")
    assert set(installed["views"]) <= set(installed["created"])
    assert installed["rows"].pop("verdict_rules") == 1  # a constant, not a table
    assert all(count == 0 for count in installed["rows"].values())
    assert installed["puzzle_file"].startswith(site_root), installed["puzzle_file"]
    assert installed["puzzles"] == [p.name for p in load_puzzles()]
