"""Variants a user can write down: a TOML file naming each variant's LLM and stage settings.

A variant is a named configuration of the LLM stages. ``NEURON_ASSETS_VARIANTS`` lists names
with the default settings; the file ``NEURON_ASSETS_VARIANTS_FILE`` names each variant with
its settings, which become the defaults of that variant's assets (its own ``llm`` resource,
its stages' op configs). Every row an LLM stage writes records the settings its run really
used (``run_settings``, after any run-config override) and which of them differ from the
variant's defaults (``overridden_settings``), so one name run with two configurations shows
as two settings strings in the ``variant_settings`` view, never as one.

This module parses, validates and records; it knows nothing of Dagster (``defs.experiments``
puts the settings on the assets).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from neuron_assets.scorers.methods import CLASSIFIED, CLASSIFIER_SCORERS, EXPLAINED, SIMULATED
from neuron_assets.storage.layout import ExperimentNameError, check_variant

# A variant table's own keys: fields of its LLM resource (defs.resources.LLMResource). base_url
# takes one server or a list of servers serving the same models (the first is base_url, the
# others base_urls); a variant that names its base_url names all of its servers.
LLM_FIELDS: dict[str, Any] = {
    "base_url": (str, list[str]),
    "explainer_model": str,
    "simulator_model": str,
    "api_key_env": str,
    "backend_name": str,
    "prompt_logprobs_shift": int,
    "json_schema_format": str,
    "per_server_concurrency": int,
    "max_concurrency": int,
    "timeout_s": float,
    "max_attempts": int,
}
# Its sub-tables, one per LLM-stage asset: the fields of that asset's op config (the config
# classes in defs/; tests/test_variants.py holds the two to the same names and types).
STAGE_FIELDS: dict[str, dict[str, Any]] = {
    "explanations": {
        "methods": list[str],
        "n_examples": int,
        "lookup_tokens": int,
        "lookup_min_count": int,
        "n_samples": int,
        "temperature": float,
        "max_tokens": int,
        "seed": int,
    },
    "simulations": {"methods": list[str], "control_seed": int, "mode": str},
    "revision_sentences": {
        "n_sentences": int,
        "n_revision": int,
        "false_positive_fraction": float,
        "max_sentence_tokens": int,
        "seed": int,
    },
    "revisions": {
        "kinds": list[str],
        "n_examples": int,
        "n_random_excerpts": int,
        "temperature": float,
        "max_tokens": int,
        "seed": int,
    },
    "revision_scores": {"mode": str},
    "classifier_scores": {
        "scorers": list[str],
        "methods": list[str],
        "n_top": int,
        "n_non_activating": int,
        "silent_fraction": float,
        "batch_size": int,
        "logprobs": str,
        "control_seed": int,
        "seed": int,
    },
}
# What each stage's rows record of its LLM beside its op config: the backend (backend_name or
# the servers' URLs, as the response cache keys on) and the model(s) the stage calls. Timeouts,
# retries and concurrency shape how a run goes, not what it answers, so they are not recorded.
RECORDED_LLM_FIELDS = {
    "explanations": ("explainer_model",),
    "simulations": ("simulator_model", "prompt_logprobs_shift", "json_schema_format"),
    "revision_sentences": ("explainer_model",),
    "revisions": ("explainer_model",),
    "revision_scores": ("simulator_model", "prompt_logprobs_shift", "json_schema_format"),
    "classifier_scores": ("simulator_model", "json_schema_format"),
}
# Which LLM resource fields make up the recorded backend.
BACKEND_FIELDS = ("base_url", "base_urls", "backend_name")
UPSTREAM = {"simulations": "explanations", "revision_sentences": "explanations", "revisions": "revision_sentences"}
UPSTREAM.update(scores="simulations", revision_scores="revisions", classifier_scores="explanations")


def _choices() -> dict[tuple[str, str], Sequence[str]]:
    from neuron_assets.llm.json_schema import JSON_SCHEMA_FORMATS
    from neuron_assets.simulators.modes.base import SimulationMode

    modes = ["auto", *(mode.value for mode in SimulationMode)]
    return {
        ("explanations", "methods"): EXPLAINED,
        ("simulations", "methods"): SIMULATED,
        ("simulations", "mode"): modes,
        ("revision_scores", "mode"): modes,
        ("llm", "json_schema_format"): JSON_SCHEMA_FORMATS,
        ("classifier_scores", "scorers"): CLASSIFIER_SCORERS,
        ("classifier_scores", "methods"): CLASSIFIED,
        ("classifier_scores", "logprobs"): ("auto", "yes", "no"),
    }


class VariantsFileError(ValueError):
    """A variants file that cannot be used, or that contradicts ``NEURON_ASSETS_VARIANTS``; the
    message names the file, the variant and the key."""


@dataclass(frozen=True)
class VariantSettings:
    """One variant's settings: ``llm``, defaults of its LLM resource's fields; ``stages``, per
    LLM-stage asset, defaults of its op config's fields; ``source``, the file that named it
    (none for a name listed in ``NEURON_ASSETS_VARIANTS``, which has the default settings)."""

    name: str
    llm: Mapping[str, Any] = field(default_factory=dict)
    stages: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        check_variant(self.name)

    @property
    def keys(self) -> list[str]:
        """The settings this variant sets, as ``key`` (LLM) and ``stage.key``."""
        base_url = ["base_url"] if "base_url" in self.llm else []
        llm = [k for k in self.llm if k not in ("base_url", "base_urls")]
        return base_url + llm + [f"{stage}.{key}" for stage, values in self.stages.items() for key in values]


def read_variants_file(path: str | Path) -> tuple[VariantSettings, ...]:
    """The variants ``path`` defines, in file order; a ``VariantsFileError`` for a file that is
    missing or not TOML, a variant named twice or not a valid name, an unknown key or a value
    of the wrong type or outside its choices."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise VariantsFileError(f"variants file {path} (NEURON_ASSETS_VARIANTS_FILE) cannot be read: {error}") from None
    _refuse_variants_named_twice(path, text)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise VariantsFileError(f"variants file {path} is not valid TOML: {error}") from None
    unknown = sorted(set(document) - {"variants"})
    if unknown:
        raise VariantsFileError(f"{path}: unknown top-level key(s) {unknown}; variants go in [variants.NAME] tables")
    tables = document.get("variants", {})
    if not isinstance(tables, dict):
        raise VariantsFileError(f"{path}: 'variants' must be a table of [variants.NAME] tables")
    return tuple(_variant(path, name, table) for name, table in tables.items())


def _refuse_variants_named_twice(path: Path, text: str) -> None:
    """TOML refuses a table declared twice, in words about tables; say it about variants."""
    header = re.compile(r"""^\s*\[\s*variants\s*\.\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*\]\s*(?:#.*)?$""")
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = header.match(line)
        if match:
            name = next(group for group in match.groups() if group is not None)
            if name in seen:
                raise VariantsFileError(
                    f"{path}: variant {name!r} is named twice (lines {seen[name]} and {number}); "
                    f"give each configuration its own name"
                )
            seen[name] = number


def _variant(path: Path, name: str, table: Any) -> VariantSettings:
    where = f"{path}: variant {name!r}"
    try:
        check_variant(name)
    except ExperimentNameError as error:
        raise VariantsFileError(f"{path}: {error}") from None
    if not isinstance(table, dict):
        raise VariantsFileError(f"{where} must be a table ([variants.{name}]), not {_kind(table)}")
    llm: dict[str, Any] = {}
    stages: dict[str, dict[str, Any]] = {}
    for key, value in table.items():
        if key in STAGE_FIELDS:
            if not isinstance(value, dict):
                raise VariantsFileError(f"{where}: {key!r} must be a table ([variants.{name}.{key}]) of its settings")
            stages[key] = {k: _value(where, f"{key}.{k}", STAGE_FIELDS[key], v, key) for k, v in value.items()}
        elif key == "base_url":
            urls = _value(where, key, LLM_FIELDS, value)
            urls = [urls] if isinstance(urls, str) else urls
            if not urls:
                raise VariantsFileError(f"{where}: key 'base_url' lists no server")
            llm.update(base_url=urls[0], base_urls=urls[1:])
        else:
            llm[key] = _value(where, key, LLM_FIELDS, value)
    return VariantSettings(name, llm, stages, str(path))


def _value(where: str, label: str, fields: dict[str, Any], value: Any, stage: str | None = None) -> Any:
    """``value`` of key ``label`` checked against ``fields`` (a stage's, or the LLM's when ``stage`` is None)."""
    key = label.rsplit(".", 1)[-1]
    if key not in fields:
        known = sorted(fields) if stage else sorted([*fields, *STAGE_FIELDS])
        raise VariantsFileError(f"{where}: unknown key {label!r}; known keys{f' of {stage}' if stage else ''}: {known}")
    alternatives = fields[key] if isinstance(fields[key], tuple) else (fields[key],)
    checked = next((v for v in (_as(value, wanted) for wanted in alternatives) if v is not None), None)
    if checked is None:
        wanted = " or ".join(_name(w) for w in alternatives)
        raise VariantsFileError(f"{where}: key {label!r} must be {wanted}, not {_kind(value)}")
    allowed = _choices().get((stage or "llm", key))
    outside = [
        v for v in (checked if isinstance(checked, list) else [checked]) if allowed is not None and v not in allowed
    ]
    if outside:
        raise VariantsFileError(f"{where}: key {label!r}: {outside} not among {list(allowed)}")
    return checked


def _as(value: Any, wanted: Any) -> Any:
    """``value`` as type ``wanted`` (an integer is also a float), or None when it is not one."""
    if wanted is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if wanted is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if wanted is str and isinstance(value, str):
        return value
    if wanted == list[str] and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _name(wanted: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number"}.get(wanted, "a list of strings")


def _kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return f"{kinds.get(type(value), type(value).__name__)} ({value!r})"


def combine(
    listed: Sequence[str] | None, defined: Sequence[VariantSettings], source: str | Path
) -> tuple[tuple[str, ...], tuple[VariantSettings, ...]]:
    """The code location's variant names and the file's settings, from the names
    ``NEURON_ASSETS_VARIANTS`` lists (None when unset) and the variants the file ``source``
    defines: the listed names first (default settings), then the file's others. Unset, the
    file's variants are all there are. A name both list and file give must mean the same:
    the file may name it only with no settings."""
    if listed is None:
        if not defined:
            raise VariantsFileError(f"{source} defines no variant: add [variants.NAME] tables")
        return tuple(v.name for v in defined), tuple(defined)
    for variant in defined:
        if variant.name in listed and variant.keys:
            raise VariantsFileError(
                f"{source}: variant {variant.name!r} is also listed in NEURON_ASSETS_VARIANTS, which gives it the "
                f"default settings, while the file sets {variant.keys}: name it in one place only"
            )
    return (*listed, *(v.name for v in defined if v.name not in listed)), tuple(defined)


def canonical(settings: Any) -> str:
    """``settings`` as compact JSON with sorted keys: equal settings are equal strings."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_settings(
    frame: pl.DataFrame,
    stage: str,
    own: Mapping[str, Any] | None,
    overridden: Sequence[str] = (),
    upstream: pl.DataFrame | None = None,
    rows: pl.Expr | None = None,
) -> pl.DataFrame:
    """``frame`` (an LLM stage's rows) with ``run_settings`` and ``overridden_settings``.

    A row's settings are those of the stage that wrote it (``own``, as ``{stage: own}``) on
    top of those recorded in the rows it was made from (``upstream``, the input of the same
    layer: the explanations a simulation simulated, ...), so a score's settings say every
    setting that shaped it. Upstream rows written before settings were recorded give their
    stage as null. ``rows`` limits the recording to some rows (the others get nulls: token
    baselines in scores, which no LLM stage made).
    """
    layers = sorted(frame["layer"].unique().to_list()) if len(frame) else []
    before = _upstream_by_layer(upstream, UPSTREAM.get(stage), layers)
    per_layer = []
    for layer in layers:
        settings, overrides = before.get(layer, ({UPSTREAM[stage]: None} if stage in UPSTREAM else {}, []))
        if own is not None:
            settings = {**settings, stage: dict(own)}
            overrides = [*overrides, *overridden]
        per_layer.append((layer, canonical(settings), sorted(set(overrides))))
    schema = {"layer": frame.schema["layer"], "run_settings": pl.String, "overridden_settings": pl.List(pl.String)}
    recorded = pl.DataFrame(per_layer, schema=schema, orient="row")
    frame = frame.drop("run_settings", "overridden_settings", strict=False).join(recorded, on="layer", how="left")
    if rows is not None:
        frame = frame.with_columns(
            pl.when(rows).then(pl.col(c)).otherwise(pl.lit(None, dtype=frame.schema[c])).alias(c)
            for c in ("run_settings", "overridden_settings")
        )
    return frame


def _upstream_by_layer(
    upstream: pl.DataFrame | None, stage: str | None, layers: list[int]
) -> dict[int, tuple[dict[str, Any], list[str]]]:
    """Per layer, the settings (parsed) and overrides the upstream rows recorded. One layer's
    rows are one file, written by one run: more than one settings string there is an error."""
    if upstream is None or stage is None or not len(upstream):
        return {}
    if "run_settings" not in upstream.columns:
        return {}
    found = (
        upstream.filter(pl.col("run_settings").is_not_null() & pl.col("layer").is_in(layers))
        .group_by("layer")
        .agg(pl.col("run_settings").unique(), pl.col("overridden_settings").first())
    )
    by_layer = {}
    for layer, strings, overrides in found.iter_rows():
        if len(strings) > 1:
            raise ValueError(f"layer {layer} of {stage} holds rows of {len(strings)} different settings: {strings}")
        by_layer[layer] = (json.loads(strings[0]), list(overrides or []))
    return by_layer
