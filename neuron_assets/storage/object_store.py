"""Results on S3-compatible object storage: ``NEURON_ASSETS_DATA_DIR=s3://bucket/prefix``.

The store reaches a bucket through fsspec's ``s3fs`` (the filesystem DuckDB's Python package
accepts through ``register_filesystem``, so the DuckDB views read the same objects; DuckDB's
own ``httpfs`` extension is downloaded at run time, which the offline hosts here cannot do).
Credentials, region and endpoint come from the usual AWS variables and files
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` for a server other than AWS, ``AWS_REGION``), read by botocore; nothing
here stores or prints them. ``check_bucket`` tries one listing first, with short timeouts,
and names the endpoint and bucket with what is wrong: unreachable, credentials refused, or no
such bucket.
"""

from __future__ import annotations

import os
from typing import Any

SCHEME = "s3://"
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 120  # one object of a study-sized layer can take a while to upload


class ObjectStoreError(RuntimeError):
    """The object store cannot be used; the message names endpoint and bucket, never a credential."""


def is_object_store(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a bucket (``s3://...``) rather than a local folder."""
    return str(location).startswith(SCHEME)


def split_location(location: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``; an ``ObjectStoreError`` when no bucket is named."""
    bucket, _, key_prefix = location.removeprefix(SCHEME).strip("/").partition("/")
    if not bucket:
        raise ObjectStoreError(f"{location!r} names no bucket: write s3://bucket or s3://bucket/prefix")
    return bucket, key_prefix.strip("/")


def endpoint_url() -> str | None:
    """The S3-compatible server named in the environment (None: AWS's own endpoints)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def endpoint() -> str:
    """The endpoint, for messages."""
    return endpoint_url() or "AWS S3 (no endpoint set)"


def filesystem() -> Any:
    """An ``s3fs`` filesystem configured from the environment, with no listing cache (a reader
    must see partitions other processes wrote a moment ago) and short connection timeouts.

    An object replaced while a reader holds it open cannot be read on: s3fs pins the version it
    opened and raises ``FileExpired`` rather than mix two. Files are fetched whole at their first
    read, so that can only happen between opening an object and that one GET."""
    import s3fs

    return s3fs.S3FileSystem(
        endpoint_url=endpoint_url(),
        use_listings_cache=False,
        skip_instance_cache=True,
        default_cache_type="all",  # a file opened by DuckDB is fetched in one GET: one version, read at once
        config_kwargs={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
            "retries": {"max_attempts": 2, "mode": "standard"},
        },
    )


def check_bucket(fs: Any, location: str) -> None:
    """List the bucket once; an ``ObjectStoreError`` naming endpoint, bucket and the problem."""
    import botocore.exceptions

    bucket, _ = split_location(location)
    where = f"the object store at {endpoint()} (bucket {bucket!r})"
    try:
        fs.ls(bucket, detail=False)
    except FileNotFoundError as error:
        raise ObjectStoreError(f"{where} has no such bucket ({error}); create it first") from None
    except PermissionError as error:
        raise ObjectStoreError(
            f"{where} refused the credentials ({error}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from None
    except botocore.exceptions.NoCredentialsError:
        raise ObjectStoreError(
            f"{where} needs credentials, and none are set: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from None
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError) as error:
        raise ObjectStoreError(f"{where} is unreachable ({type(error).__name__}: {error})") from None
    except (botocore.exceptions.BotoCoreError, OSError) as error:  # e.g. a bucket name the server refuses
        raise ObjectStoreError(f"{where} refused the request ({type(error).__name__}: {error})") from None


def upload_object(fs: Any, key: str, data: bytes) -> None:
    """Put ``data`` at ``key`` in one upload, which S3 makes visible whole or not at all: a failed or
    cut upload leaves the object that was there before. A failure is an ``ObjectStoreError``
    naming the object and the endpoint."""
    import botocore.exceptions

    try:
        fs.pipe_file(key, data)
    except (botocore.exceptions.BotoCoreError, OSError) as error:
        raise ObjectStoreError(
            f"the upload of {SCHEME}{key} ({len(data):,} bytes) to {endpoint()} failed "
            f"({type(error).__name__}: {error}); the object stored there before, if any, is unchanged"
        ) from None
