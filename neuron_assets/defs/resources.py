"""Dagster resources: the subject model, the LLM backend, and the Parquet/DuckDB IO manager."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Optional, TypeVar

import dagster as dg
import polars as pl
from pydantic import Field, PrivateAttr

from neuron_assets.defs.common import column_schema
from neuron_assets.defs.partitions import stored_partitions

PACKAGED_LLM = "packaged SmolLM2-135M-Instruct on a local llama.cpp server"
R = TypeVar("R", bound=dg.Config)


def with_defaults(resource: type[R], **defaults: Any) -> type[R]:
    """``resource`` (or an op's config class) with ``defaults`` as its fields' defaults, not as
    values set on an instance; each field keeps its description.

    Dagster replaces the whole configuration of a resource that run config names, so values
    set at construction are lost when a user's run config sets one field (a block with only
    ``max_concurrency`` would otherwise run on the packaged model instead of the configured
    server); defaults are filled in field by field.
    """
    from pydantic import create_model

    fields = {
        name: (
            resource.model_fields[name].annotation,
            Field(value, description=resource.model_fields[name].description),
        )
        for name, value in defaults.items()
    }
    return create_model(resource.__name__, __base__=resource, __module__=resource.__module__, **fields)


# Subject models booted in this process, by (name, cache folder, device, weights' stamp): Dagster
# makes a resource anew for every run, and several runs in one process (in-process execution,
# make demo's steps, the tests) would each boot the same model again. A loaded model is only
# ever read; steps that perturb it do so through hooks they remove.
_LOADED: dict[tuple[Any, ...], Any] = {}
_LOADING = threading.Lock()


def _weights_stamp(name: str) -> tuple[tuple[str, int, int], ...]:
    """A local folder's files with their sizes and modification times (a hub or packaged name: none),
    so a model saved again under the same folder is booted again."""
    folder = Path(name)
    if not folder.is_dir():
        return ()
    return tuple(
        (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
        for entry in sorted(folder.iterdir())
        if entry.is_file()
    )


class SubjectModelResource(dg.ConfigurableResource):
    """The networks whose neurons we explain, each booted once per process when first used.

    Which model an asset needs is fixed by its experiment (the asset key's prefix); this
    resource holds how models are loaded (device, weights cache); the loaded models are
    kept for the process (``_LOADED``), shared by its runs.
    """

    device: str = Field(
        default="auto",
        description="torch device of the subject models: 'auto' (a CUDA GPU where torch sees one, "
        "else the CPU), 'cpu', 'cuda' or 'cuda:N'",
    )
    cache_dir: Optional[str] = None

    def load(self, name: str) -> Any:
        key = (name, self.cache_dir, self.device, _weights_stamp(name))
        with _LOADING:
            if key not in _LOADED:
                from neuron_assets.recording.subject_model import load_subject_model

                cache = Path(self.cache_dir) if self.cache_dir else None
                _LOADED[key] = load_subject_model(name, cache, self.device)
            return _LOADED[key]

    def load_for(self, name: str, excerpts: pl.DataFrame) -> Any:
        """Model ``name``, refused with a ``SubjectModelError`` when another model's tokenizer cut ``excerpts``."""
        from neuron_assets.recording.subject_model import SubjectModelError

        model = self.load(name)
        if excerpts["subject_model"][0] != model.name:
            raise SubjectModelError(
                f"excerpts were cut with {excerpts['subject_model'][0]!r}'s tokenizer but the subject "
                f"model is {model.name!r}: materialize 'excerpts' again"
            )
        return model


class ResultStoreResource(dg.ConfigurableResource):
    """Where results live: Parquet files per table, experiment and partition, views in results.duckdb."""

    data_dir: str
    local_dir: str | None = None  # for a bucket: where results.duckdb and the response cache live

    _store: Any = PrivateAttr(default=None)

    def store(self) -> Any:
        """The store, opened once per resource (a bucket is checked then); results of the layout
        before experiments are moved to their place the first time (nothing writes it any more)."""
        from neuron_assets.storage.store import ResultStore

        if self._store is None:
            store = ResultStore(self.data_dir, self.local_dir)
            store.migrate_old_layout()
            self._store = store
        return self._store


class LLMResource(dg.ConfigurableResource):
    """Explainer and simulator behind the openai SDK, with a response cache and retries.

    With no ``base_url`` the packaged SmolLM2 GGUF is served by a llama.cpp server on a
    free loopback port, started on first use and stopped when the run ends. Otherwise any
    OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp), or several serving the same
    models (``base_urls``): calls spread over them, at most ``per_server_concurrency`` at a
    time on each, and one that goes down rests while the others carry on. The API key is read from
    the environment variable named by ``api_key_env`` at call time and stored nowhere.
    Responses are cached in the results folder's local folder (``llm_cache/``), so re-materializing
    unchanged work makes no LLM call.
    """

    results: ResultStoreResource
    base_url: Optional[str] = None
    base_urls: list[str] = Field(
        default_factory=list, description="more servers beside base_url, serving the same models"
    )
    per_server_concurrency: Optional[int] = Field(
        default=None,
        description="requests in flight per server (none: the slots a server reports, as llama.cpp's does, "
        "and no limit on one that reports none)",
    )
    backend_name: Optional[str] = Field(
        default=None,
        description="what the response cache keys on instead of the URLs, so servers can be added or moved",
    )
    explainer_model: Optional[str] = None
    simulator_model: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"
    prompt_logprobs_shift: Optional[int] = Field(
        default=None,
        description="where the server files echoed prompt log-probabilities (0, or -1 for stock llama-cpp-python "
        "on models without BOS); unset, the all_at_once simulator's alignment probe finds it, and a value set "
        "here that the probe contradicts is an error",
    )
    json_schema_format: Optional[str] = Field(
        default=None,
        description="how the server takes a JSON schema for JSON replies (the json simulator's, the classifier "
        "scorers'): 'json_schema' (vLLM, "
        "SGLang, llama.cpp's server, Ollama), 'json_object' (llama-cpp-python's server) or 'none' (the prompt "
        "alone; OpenAI); unset: json_object for the local server, none for a base_url",
    )
    timeout_s: float = 300.0
    max_attempts: int = 5
    max_concurrency: int = 1  # neurons in flight at once: at least servers x per-server concurrency to use them all
    cache: bool = True

    _server: Any = PrivateAttr(default=None)
    _pool: Any = PrivateAttr(default=None)

    def urls(self) -> list[str]:
        return ([self.base_url] if self.base_url else []) + list(self.base_urls)

    def client(self) -> Any:
        """A ``CachingClient`` with fresh call counts; the backend is checked reachable once.

        With the local server, a request that cannot connect first asks whether the server
        process is still alive, so its death fails the step at once, naming the signal.
        """
        from neuron_assets.llm.client import CachingClient, RetryPolicy
        from neuron_assets.llm.response_cache import ResponseCache

        if self._pool is None:
            self._pool = self._connect()
        cache = ResponseCache(self.results.store().root / "llm_cache") if self.cache else None
        liveness = self._server.check_alive if self._server is not None else None
        return CachingClient(
            self._pool,
            self.backend(),
            cache,
            RetryPolicy(max_attempts=self.max_attempts),
            liveness=liveness,
            json_schema_format=self.reply_schema_format(),
        )

    def reply_schema_format(self) -> str:
        """``json_schema_format``, or where unset what the local server takes (none for a ``base_url``)."""
        from neuron_assets.llm.json_schema import check_json_schema_format

        if self.json_schema_format is not None:
            return check_json_schema_format(self.json_schema_format)
        return "none" if self.urls() else "json_object"

    def backend(self) -> str:
        """What the cache keys on: ``backend_name``, the URL(s), or the packaged model (its port changes per run)."""
        from neuron_assets.llm.llama_server import PACKAGED_GGUF

        return self.backend_name or ", ".join(sorted(self.urls())) or f"local llama.cpp: {PACKAGED_GGUF}"

    def _connect(self) -> Any:
        """A ``ServerPool`` of the configured servers (or the local one); servers that cannot be
        reached start resting, and only when none can be reached is that an error."""
        import openai

        from neuron_assets.llm.server_pool import Server, ServerPool, reported_slots

        urls = self.urls()
        if not urls:
            from neuron_assets.llm.llama_server import PACKAGED_MODEL_ALIAS, LocalLlamaServer, packaged_gguf_path

            self._server = LocalLlamaServer(packaged_gguf_path(), PACKAGED_MODEL_ALIAS).__enter__()
            urls = [self._server.base_url]
        servers = [
            Server(
                url,
                openai.OpenAI(
                    base_url=url,
                    api_key=os.environ.get(self.api_key_env) or "not-needed",
                    timeout=self.timeout_s,
                    max_retries=0,  # CachingClient retries, with its own policy
                ),
            )
            for url in urls
        ]
        pool = ServerPool(servers, self.per_server_concurrency)
        unreachable = {}
        for server in servers:
            try:
                server.client.models.list()
            except openai.APIConnectionError as error:
                unreachable[server.url] = str(error)
                pool.failed(server)
            else:
                if self.per_server_concurrency is None:
                    server.slots = reported_slots(server.url)
        if len(unreachable) == len(servers):
            if len(servers) == 1:
                ((url, error),) = unreachable.items()
                raise ConnectionError(f"cannot reach the LLM server at {url}: {error}")
            named = "; ".join(f"{url} ({error})" for url, error in unreachable.items())
            raise ConnectionError(f"cannot reach any of the LLM servers: {named}")
        return pool

    def server_metadata(self) -> dict[str, str]:
        """For asset metadata: calls per server when there are several or one reported its slots, and
        which local llama.cpp build serves and why faster ones were passed over."""
        local = {"local_llama_build": self._server.describe_build()} if self._server is not None else {}
        servers = self._pool.servers if self._pool is not None else []
        several = self._pool.describe() if len(servers) > 1 or any(s.slots for s in servers) else {}
        return {**several, **local}

    def model_names(self) -> tuple[str, str]:
        """(explainer model, simulator model); both default to the packaged model's alias."""
        from neuron_assets.llm.llama_server import PACKAGED_MODEL_ALIAS

        if self.urls() and not (self.explainer_model and self.simulator_model):
            raise ValueError("with a base_url, set explainer_model and simulator_model too")
        return (self.explainer_model or PACKAGED_MODEL_ALIAS, self.simulator_model or PACKAGED_MODEL_ALIAS)

    def simulator(self, requested_mode: str) -> tuple[Any, str, str, str, int]:
        """(client, simulator model, mode, how it reads "10", where its echo files distributions):
        ``requested_mode`` resolved against the backend and the simulator's tokenizer probed, as
        every simulating asset needs."""
        from neuron_assets.simulators.probes import probe_ten_handling, resolve_mode

        _, model = self.model_names()
        client = self.client()
        mode = resolve_mode(client, model, requested_mode)
        ten_handling = probe_ten_handling(client, model, mode)
        return client, model, mode, ten_handling, self.distribution_shift(client, model, mode, ten_handling)

    def distribution_shift(self, client: Any, model: str, mode: str, ten_handling: str | None = None) -> int:
        """Where the server files the distribution that predicted each echoed token, for ``mode``:
        for all_at_once the alignment probe's answer (``probes.probe_alignment``: a tokenizer whose
        echo cannot be read is an ``AlignmentError`` there, before anything is simulated), checked
        against ``prompt_logprobs_shift`` where that is set; the other modes read no echo (0)."""
        from neuron_assets.simulators.modes.base import SimulationMode
        from neuron_assets.simulators.probes import check_shift, probe_alignment

        if mode != SimulationMode.ALL_AT_ONCE:
            return self.prompt_logprobs_shift or 0
        return check_shift(probe_alignment(client, model, ten_handling), self.prompt_logprobs_shift, model)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._server is not None:
            self._server.__exit__(None, None, None)
            self._server = None
        self._pool = None


class ResultStoreIOManager(dg.ConfigurableIOManager):
    """Stores each asset as validated Parquet under its key's prefix, one file per layer partition (see ``storage``)."""

    results: ResultStoreResource

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        *prefix, table = context.asset_key.path
        store = self.results.store()
        if context.has_asset_partitions:
            paths = [
                store.write(table, obj.filter(pl.col("layer") == int(layer)), layer, prefix)
                for layer in stored_partitions(context.asset_partition_keys)
            ]
        else:
            paths = [store.write(table, obj, None, prefix)]
        self._refresh_views(context, store)
        context.add_output_metadata(
            {
                "dagster/row_count": len(obj),
                "dagster/column_schema": column_schema(table),
                "files": [str(p) for p in paths],
                "duckdb": str(store.database),
            }
        )

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        *prefix, table = context.upstream_output.asset_key.path
        partitions = stored_partitions(context.asset_partition_keys) if context.has_asset_partitions else None
        return self.results.store().read(table, partitions, prefix)

    @staticmethod
    def _refresh_views(context: dg.OutputContext, store: Any) -> None:
        """Write new or changed DuckDB views; a reader holding the file only delays that, plainly said."""
        import duckdb

        try:
            written = store.refresh_views()
        except duckdb.IOException as error:
            context.log.info(
                f"{store.database} is open in another process, so new or changed DuckDB views will be written "
                f"at the next materialization after it is closed; the data is on disk and the existing views "
                f"already read it ({error})"
            )
            return
        if written:
            context.log.info(f"DuckDB views written: {', '.join(written)}")
