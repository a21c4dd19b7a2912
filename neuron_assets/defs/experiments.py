"""Experiments side by side: one set of assets per subject model, and of LLM stages per variant.

Asset keys are prefixed ``<model>/`` (recording, token baselines) or ``<model>/<variant>/``
(the LLM stages), and the IO manager files results under the same prefix, so another
subject model or another variant never replaces earlier results. Each subject model keeps
its own layer partitions (models differ in depth), so the partition picker and layer
backfills work as before, per model and per variant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import dagster as dg
import polars as pl

from neuron_assets.storage.layout import VARIANT_TABLES, check_variant, model_slug, prefix
from neuron_assets.storage.store import DEFAULT_VARIANT
from neuron_assets.variants import VariantSettings
from neuron_assets.viewer import DEFAULT_URL

C = TypeVar("C", bound=dg.Config)


@dataclass(frozen=True)
class Experiment:
    """Where a domain's assets go: the subject model, the variant, and the model's layer partitions
    (needed only to build assets; without them an experiment names keys, ops and selections);
    ``settings``, the variant's settings (from a variants file; none: the default settings)."""

    subject_model: str
    variant: str = DEFAULT_VARIANT
    partitions: dg.PartitionsDefinition | None = None
    viewer_url: str = DEFAULT_URL
    llm_layers_per_run: int | None = None
    recording_layers_per_run: int | None = None
    settings: VariantSettings | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_variant(self.variant)
        if self.settings is not None and self.settings.name != self.variant:
            raise ValueError(f"variant {self.variant!r} was given the settings of {self.settings.name!r}")

    @property
    def llm_key(self) -> str:
        """The resource key of this variant's LLM: its own (``llm__<variant>``, with its settings as
        the fields' defaults) when its settings name any LLM field, else the shared ``llm``."""
        return llm_key(self.settings) if self.settings is not None else "llm"

    def llm(self, context: dg.AssetExecutionContext) -> Any:
        """This variant's ``LLMResource`` in a run (the assets ask for it by ``llm_asset``)."""
        return getattr(context.resources, self.llm_key)

    def config(self, config_class: type[C], table: str) -> type[C]:
        """``config_class`` with the variant's settings of ``table`` as its fields' defaults (so the
        Launchpad shows them and a run config naming one field keeps the others)."""
        from neuron_assets.defs.resources import with_defaults

        values = self.settings.stages.get(table) if self.settings is not None else None
        return with_defaults(config_class, **values) if values else config_class

    def llm_asset(self, table: str, *inputs: str, resources: tuple[str, ...] = ()) -> dict[str, Any]:
        """``asset``'s arguments for an asset calling the variant's LLM (``llm(context)``) and ``resources``."""
        return {**self.asset(table, *inputs), "required_resource_keys": {self.llm_key, *resources}}

    def with_settings(
        self,
        frame: pl.DataFrame,
        table: str,
        config: dg.Config | None = None,
        llm: Any = None,
        upstream: pl.DataFrame | None = None,
        rows: pl.Expr | None = None,
    ) -> pl.DataFrame:
        """``frame`` with the settings its run used (``run_settings``) and those differing from the
        variant's defaults (``overridden_settings``): ``config``'s fields, the ``llm``'s backend and
        model(s) (``variants.RECORDED_LLM_FIELDS``), on top of ``upstream``'s (see ``record_settings``)."""
        from neuron_assets.variants import BACKEND_FIELDS, RECORDED_LLM_FIELDS, record_settings

        own, overridden = None, []
        if config is not None:
            own = config.model_dump()
            overridden = [f"{table}.{key}" for key, value in own.items() if value != _default(config, key)]
        if llm is not None:
            fields = RECORDED_LLM_FIELDS[table]
            explainer, simulator = llm.model_names()
            resolved = {
                "explainer_model": explainer,
                "simulator_model": simulator,
                "json_schema_format": llm.reply_schema_format(),
            }
            own = {**(own or {}), "backend": llm.backend(), **{k: resolved.get(k, getattr(llm, k)) for k in fields}}
            overridden += [f"llm.{k}" for k in (*BACKEND_FIELDS, *fields) if getattr(llm, k) != _default(llm, k)]
        return record_settings(frame, table, own, overridden, upstream, rows)

    @property
    def viewer(self) -> str:
        """This experiment's index in the neuron viewer (``make view``); neuron pages are below it."""
        return f"{self.viewer_url.rstrip('/')}/{self.slug}/{self.variant}"

    @property
    def slug(self) -> str:
        return model_slug(self.subject_model)

    def prefix(self, table: str) -> list[str]:
        return prefix(self.slug, self.variant, table)

    def key(self, table: str) -> dg.AssetKey:
        return dg.AssetKey([*self.prefix(table), table])

    def op_name(self, table: str) -> str:
        """The name Dagster gives the asset's op: what run config is keyed by (``ops: {name: ...}``)."""
        return "__".join(self.key(table).path)

    def backfill_policy(self, table: str) -> dg.BackfillPolicy:
        """One run for all requested layers, except where a setting fans a stage out as one run
        per that many layers: the LLM stages with ``llm_layers_per_run`` (for workers, or several
        LLM servers), recording with ``recording_layers_per_run`` (each run's forward pass then
        holds the state of that many layers only, at the cost of one pass per run)."""
        from neuron_assets.defs.common import SINGLE_RUN

        if table in VARIANT_TABLES and self.llm_layers_per_run is not None:
            return dg.BackfillPolicy.multi_run(max_partitions_per_run=self.llm_layers_per_run)
        if table == "activation_records" and self.recording_layers_per_run is not None:
            return dg.BackfillPolicy.multi_run(max_partitions_per_run=self.recording_layers_per_run)
        return SINGLE_RUN

    def asset(self, table: str, *inputs: str, partitioned: bool = True) -> dict[str, Any]:
        """``@dg.asset`` arguments for ``table``: its key, inputs, columns (with descriptions) and,
        when ``partitioned``, the layer partitions with their backfill policy."""
        from neuron_assets.defs.common import column_schema

        layers = (
            {"partitions_def": self.partitions, "backfill_policy": self.backfill_policy(table)} if partitioned else {}
        )
        columns = {"dagster/column_schema": column_schema(table)}
        return {"key": self.key(table), "ins": self.ins(*inputs), "metadata": columns, **layers}

    def run_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with its ``ops`` entries named by table (``activation_records``) renamed to this
        experiment's op names, so one run config serves any subject model and variant."""
        from neuron_assets.storage.schemas import MODEL_TABLES

        ops = {self.op_name(n) if n in MODEL_TABLES else n: value for n, value in config.get("ops", {}).items()}
        return {**config, **({"ops": ops} if ops else {})}

    def out(self, table: str, group: str, description: str) -> dg.AssetOut:
        """A multi-asset's output for ``table``: its key and columns, as ``asset`` gives a single asset."""
        from neuron_assets.defs.common import column_schema

        return dg.AssetOut(
            key=self.key(table),
            metadata={"dagster/column_schema": column_schema(table)},
            group_name=group,
            description=description,
        )

    def ins(self, *tables: str) -> dict[str, dg.AssetIn]:
        """Inputs named after the tables, read from this experiment's assets."""
        return {table: dg.AssetIn(key=self.key(table)) for table in tables}

    def selection(self, *groups: str) -> dg.AssetSelection:
        """The assets of ``groups`` (stages) of this subject model, LLM stages of this variant only."""
        from neuron_assets.storage.schemas import MODEL_TABLES

        shared = [self.key(table) for table in MODEL_TABLES if table not in VARIANT_TABLES]
        mine = dg.AssetSelection.key_prefixes([self.slug, self.variant]) | dg.AssetSelection.assets(*shared)
        return dg.AssetSelection.groups(*groups) & mine

    def lineage(self, frame: pl.DataFrame, context: dg.AssetExecutionContext, table: str) -> pl.DataFrame:
        """Tag ``table``'s rows with the run that wrote them, their layer partition, the subject model
        and, for an LLM stage, the variant."""
        from neuron_assets.defs.partitions import layer_key_column

        tags = {
            "run_id": pl.lit(context.run.run_id),
            "partition": layer_key_column(),
            "subject_model": pl.lit(self.subject_model),
        }
        if table in VARIANT_TABLES:
            tags["variant"] = pl.lit(self.variant)
        return frame.with_columns(**tags)


def llm_key(settings: VariantSettings) -> str:
    """The resource key of the LLM of the variant with ``settings`` (see ``Experiment.llm_key``)."""
    return f"llm__{settings.name}" if settings.llm else "llm"


def _default(model: Any, field_name: str) -> Any:
    """The default of ``model``'s field: the variant's setting, or the code's, as its class holds it."""
    return type(model).model_fields[field_name].get_default(call_default_factory=True)
