"""Typed models of a pipeline file. Keys are camelCase, as in the original format."""
from __future__ import annotations

import re
from collections.abc import Collection
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    field_validator,
)

from pipeline_defs.config import durations
from pipeline_defs.config.base import FormatModel
from pipeline_defs.config.orchestration import (
    POOL,
    Dependency,
    NewFiles,
    Partitions,
    Retries,
    Schedule,
    Triggers,
)


def _key_parts(value: list[str] | str) -> list[str]:
    parts = value.split("/") if isinstance(value, str) else value
    if not parts or any(not p.strip() for p in parts):
        raise ValueError("an asset key is one or more non-empty names: \"orders\", "
                         "\"sales/orders\" or [\"sales\", \"orders\"]")
    return parts


def _owner(value: str) -> str:
    if not (re.fullmatch(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,7}", value)
            or (value.startswith("team:") and len(value) > 5)):
        raise ValueError(f"owner '{value}' is neither an email address nor a team "
                         "(\"team:data-platform\")")
    return value


def _tags(value: dict[str, str]) -> dict[str, str]:
    for k, v in value.items():
        if not re.fullmatch(r"([A-Za-z0-9_.-]{1,63}/)?[A-Za-z0-9_.-]{1,63}", k):
            raise ValueError(f"tag key '{k}' may hold letters, digits, _ . - (at most 63, with "
                             "an optional namespace/ before)")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{0,63}", v):
            raise ValueError(f"tag '{k}': value '{v}' may hold letters, digits, _ . - (at most "
                             "63): Dagster's rule for asset tags")
    return value


Owner = Annotated[str, AfterValidator(_owner)]
"""Who to ask about a table: an email address or "team:<name>" (Dagster's asset owners)."""
Tags = Annotated[dict[str, str], AfterValidator(_tags)]
"""Dagster tags of a pipeline's runs and assets (Dagster's rules for asset tags)."""

AssetKeyParts = Annotated[list[str] | str, AfterValidator(_key_parts)]
"""A load's Dagster asset key: "orders", "sales/orders" or ["sales", "orders"] (a list after
validation)."""


def asset_key_field(what: str = "the table"):
    return Field(None, description=f"Dagster asset key of {what}: \"orders\", \"sales/orders\""
                 " or [\"sales\", \"orders\"]. Default: its own name (the path's last "
                 "segment, the table, the topic).")




StorageLevelName = Literal["MEMORY_AND_DISK", "MEMORY_ONLY", "DISK_ONLY", "MEMORY_AND_DISK_2",
                           "MEMORY_ONLY_2", "DISK_ONLY_2", "OFF_HEAP",
                           "MEMORY_AND_DISK_DESER"]


class StepModel(FormatModel):
    """Base of every method's `config`. Subclasses describe one method each."""

    register_as: str | None = Field(
        None, description="Also store this step's output under this name, for later steps' "
                          "`inputDataFrames` / `referencedDataFrame` and as a view in `sql`.")

    cache: bool = Field(
        False, description="Persist this step's output (its registerAs name too) once computed, "
        "at cacheStorageLevel, for later steps that read it more than once (the original's "
        "extract key; any extract or transform here). \"true\" as a string works too.")
    cache_storage_level: StorageLevelName = Field(
        "MEMORY_AND_DISK", description="Spark storage level of `cache`.")

    parameters: dict[str, str] = Field(
        default_factory=dict, description="Values for ${name} placeholders of this step only, "
        "which may use the pipeline's params and ${DATE}, ${DATE-1}, ${DATE:yyyyMMdd}, e.g. "
        "{\"execution_date\": \"${DATE-1}\"}.")

    sql_fields: ClassVar[frozenset[str]] = frozenset()
    """Keys (as the file writes them; `merge.matchedCondition` for a nested one) whose strings
    are SQL (also the strings of the lists and maps they hold): a parameter's value
    substituted there must not be able to change the statement's structure."""
    name_fields: ClassVar[frozenset[str]] = frozenset()
    """Keys whose strings are names put into SQL (a JDBC `table`): values may build a name
    (`${schema}.orders`, `${table}_km`) and nothing else; written with quotes, brackets or
    spaces (a `(SELECT ...) t` subquery) they are SQL text as above."""
    sql_dialect: ClassVar[str] = "spark"
    """The SQL dialect of those strings (sqlglot's name): spark, postgres, mysql."""

    # Dataflow traits, read by the static check and the factory (not part of the JSON).
    uses_current: ClassVar[bool] = True
    """The step works on the current DataFrame (the previous step's output)."""
    filters: ClassVar[bool] = False
    """The step holds a row filter that Spark may push towards the source."""
    passes_filters: ClassVar[bool] = False
    """A filter in a later step can be pushed through this step to its source."""
    counts_rows: ClassVar[bool] = False
    """A load whose sink reports the rows it wrote (so its input needs no observe())."""
    preserves_rows: ClassVar[bool] = False
    """The step outputs exactly as many rows as it reads (so it needs no count of its own)."""
    keeps_rows_identity: ClassVar[bool] = False
    """The step's output rows are input rows (some dropped, columns changed), so a check on
    the input's rows also describes the tables they reach (not so for aggregates, joins,
    pivots or SQL)."""

    writes_asset: ClassVar[bool] = False
    """A transform that writes an asset of its own at `location()` (trainModel: a model), as
    a load writes a table: the asset's materialization is the step's."""
    reads_asset: ClassVar[bool] = False
    """A transform that reads an asset at `location()` (predict: a model), as an extract
    reads a table: it depends on that asset."""
    checks_model: ClassVar[bool] = False
    """A validation of a model (evaluateModel): an asset check of the model trained
    upstream of it, not of the tables its rows reach."""

    def default_asset_key(self) -> list[str] | None:
        """The asset key of what it writes or reads when no assetKey is given (None: the
        table's own name)."""
        return None

    def named_inputs(self, registered: Collection[str] = ()) -> list[tuple[str, str]]:
        """(field path, DataFrame name) for every registered DataFrame this step reads.
        `registered` holds the names registered by earlier steps."""
        return []

    def keeps_rows(self) -> bool:
        """Whether the output has as many rows as the input (preserves_rows, unless
        overridden)."""
        return self.preserves_rows

    def scans_natively(self) -> bool:
        """An extract whose source native execution (Comet) scans itself (Parquet files): an
        observe() on the rows that come from it would keep what follows on Spark."""
        return False

    def reads_current(self) -> bool:
        """Whether this step reads the current DataFrame (uses_current, unless overridden)."""
        return self.uses_current

    def location(self) -> str | None:
        """Where an extract reads or a load writes (path, table, topic), for asset keys."""
        return None

    def table_name(self) -> str | None:
        """The name people call what it reads or writes: a path's last segment without its
        extension (`.../customers.csv` -> customers); tables and topics override it."""
        loc = self.location()
        if not loc:
            return None
        tail = loc.rstrip("/").rsplit("/", 1)[-1]
        stem = tail.rsplit(".", 1)[0] if "." in tail.lstrip(".") else tail
        return stem.lstrip(".") or None

    def catalog_name(self) -> str | None:
        """The table's name in its database or broker (Dagster's `dagster/table_name`), for
        what has one: `shop.public.orders`, a topic. Paths have none."""
        return None

    def problems(self) -> list[tuple[str, str, str]]:
        """Cross-field problems as (field path, what is wrong, how to fix)."""
        return []

    def streaming_problems(self) -> list[tuple[str, str, str]]:
        """Problems of this config in a streaming pipeline, as (field path, what, fix)."""
        return []

    def needed_columns(self) -> list[tuple[str, list[str]]]:
        """(field as the file writes it, columns) the input must have: checked before Spark
        starts when the input's columns are declared (an extract's `schema`)."""
        return []

    def output_columns(self, columns: dict[str, str]) -> dict[str, str] | None:
        """A transform's output columns ({lower-case name: Spark SQL type}) given its input's,
        when they follow from its config (featureEngineering adds its features); None:
        unknown, later steps' columns are not checked statically."""
        return None

    def declared_schema(self) -> str | None:
        """An extract's output columns as DDL, when its config fixes them (`schema`)."""
        return None

    def input_problems(self, columns: dict[str, str]) -> list[tuple[str, str, str]]:
        """Problems with the input's declared columns ({lower-case name: Spark SQL type}) as
        (field, what, fix): by default, the needed_columns it lacks."""
        out = []
        for field, names in self.needed_columns():
            gone = [n for n in names if n.lower() not in columns]
            if gone:
                out.append((field, f"names {', '.join(map(repr, gone))}, which the input does "
                            f"not have (its declared columns: {', '.join(columns)}).",
                            "Fix the name, or the schema that declares the columns."))
        return out

    def table_checks(self) -> list[tuple[str, str]]:
        """(name, what it checks) of the checks a load makes of the table it wrote: asset
        checks `<step>_<name>` of the load's asset, evaluated in the load's op."""
        return []


def exactly_one(cfg: BaseModel, first: str, second: str, fix: str) -> list[tuple[str, str, str]]:
    """The rule "give exactly one of `first` and `second`" (field names) as problems(),
    naming the keys as the file writes them."""
    a, b = (getattr(cfg, n) for n in (first, second))
    if (a is None) == (b is None):
        key = type(cfg).model_fields[first].alias or first
        other = type(cfg).model_fields[second].alias or second
        return [(key, f"give exactly one of {key} and {other}.", fix)]
    return []


def check_duration(value):
    """A pydantic validator: the value parses as a duration (the message says how to write it)."""
    durations.seconds(value)
    return value


def check_trigger(value):
    durations.trigger_kwargs(value)
    return value


class StepSpec(FormatModel):
    """One entry of `steps`."""

    type: Literal["extract", "transform", "validate", "load"] = Field(
        description="What the step does: extract (read), transform, validate or load (write).")
    method: str = Field(description="The method, e.g. fromDeltaLake, filterRows, toDeltaLake. "
                                    "`pipeline list` shows them all.")
    name: str | None = Field(None, description="Optional short name, used for the Dagster op "
                                               "name and in messages, e.g. \"load_orders\".")
    description: str | None = Field(None, description="Free text shown in the Dagster UI.")
    config: dict[str, Any] = Field(default_factory=dict,
                                   description="The method's settings; see the method's schema.")
    condition: str | None = Field(
        None, description="Run the step only when this holds, e.g. \"previous_step_count > 0\" "
        "(previous_step_count, steps.<name>.rows, params, execution_date; comparisons, and, "
        "or, not). False: the step and every step after it that needs it are skipped.")
    retries: Retries | None = Field(None, description="Retries of this step on transient "
                                    "failures (overrides the pipeline's).")
    pool: str | None = Field(None, pattern=POOL.pattern, description="Dagster concurrency pool "
                             "of this step (overrides the pipeline's).")
    owners: list[Owner] | None = Field(None, description="A load's: the owners of the table it "
                                       "writes (replacing the pipeline's `owners`).")
    tags: Tags | None = Field(None, description="A load's: Dagster tags of the table it writes "
                              "(over the pipeline's `tags`).")


class StreamingSettings(FormatModel):
    """How a streaming pipeline's queries live inside the Dagster run."""

    await_termination: bool = Field(
        True, description="Keep the run (and its queries) going until the queries end: with "
        "trigger availableNow/once when the backlog is drained, else at `timeout` or when the "
        "run is terminated. false: stop gracefully after each query's first micro-batch.")
    timeout: str | int | None = Field(
        None, description="Stop the queries gracefully after this long (seconds, or \"10 "
        "minutes\"); the run then succeeds.")
    trigger: str | None = Field(None, description="Default trigger of the loads: \"5 "
                                "seconds\", \"availableNow\" or \"once\".")
    checkpoint_root: str | None = Field(
        None, description="Where checkpoints go when a load has no checkpointLocation: "
        "<root>/<pipeline>/<step> (default PIPELINE_CHECKPOINT_ROOT, else ./checkpoints).")
    progress_interval_s: float = Field(10.0, gt=0, description="At most one progress line per "
                                       "query per this many seconds in the run's log.")

    _timeout = field_validator("timeout")(check_duration)
    _trigger = field_validator("trigger")(check_trigger)


class PipelineConfig(FormatModel):
    """A pipeline file: named steps that run in order on Spark."""

    name: str = Field(description="Pipeline name; the Dagster job name is derived from it.")
    mode: Literal["batch", "streaming"] = Field(
        "batch", description="batch, or streaming (Structured Streaming).")
    description: str | None = Field(None, description="Shown on the Dagster job.")
    params: dict[str, str] = Field(
        default_factory=dict,
        description="Defaults for ${name} placeholders used in step configs. A default may "
                    "read the environment: \"${env:DATA_DIR:-/data}\". `pipeline run --param "
                    "name=value` overrides.")
    tags: Tags = Field(default_factory=dict, description="Dagster tags of the job, its runs and "
                       "its assets, e.g. {\"domain\": \"sales\", \"tier\": \"gold\"} "
                       "(letters, digits, _ . -; a load's `tags` add to them for its table).")
    owners: list[Owner] = Field(default_factory=list, description="Owners of the pipeline's "
                                "tables: emails or \"team:<name>\" (a load's `owners` replace "
                                "them for its table).")
    mask_columns: list[str] = Field(default_factory=list, description="Columns whose values "
                                    "are shown as *** in validation samples.")
    quarantine_root: str | None = Field(None, description="Where quarantined rows go by "
                                        "default: <quarantineRoot>/<pipeline>/<step> (default "
                                        "PIPELINE_QUARANTINE_ROOT, else ./quarantine).")
    streaming: StreamingSettings = Field(default_factory=StreamingSettings,
                                         description="Streaming mode: query lifecycle.")
    schedule: Annotated[Schedule | None, BeforeValidator(
        lambda v: {"cron": v} if isinstance(v, str) else v,
        json_schema_input_type=Schedule | str | None)] = Field(
        None, description="When to run: {\"cron\": \"0 6 * * *\", \"timezone\": "
        "\"America/New_York\", \"enabled\": true}, or just the cron string.")
    dependencies: list[Dependency] = Field(
        default_factory=list, description="Pipelines whose success starts this one: [{\"pipeline"
        "\": \"orders-enrichment\", \"waitForCompletion\": true, \"timeout\": 3600000}].")
    automation: Triggers | None = Field(
        None, description="Lineage-driven runs: \"eager\" (whenever a table it reads is "
        "updated by another pipeline), or {\"onCron\": \"0 * * * *\"} (on the cron, once "
        "what it reads has been updated).")
    sensors: list[NewFiles] = Field(
        default_factory=list, description="Sensors that start runs: [{\"type\": \"newFiles\", "
        "\"path\": \"s3a://landing/orders/\", \"pattern\": \"*.csv\", "
        "\"minimumIntervalSeconds\": 30}]; a run sees its file as ${trigger.file}.")
    partitions: Partitions | None = Field(
        None, description="Time partitions: {\"type\": \"daily\", \"start\": \"2024-01-01\", "
        "\"timezone\": \"UTC\"}; each run is one partition, whose key is its ${DATE}.")
    retries: Retries | None = Field(None, description="Retries of each step on transient "
                                    "failures (connection refused or reset, 5xx, broker "
                                    "unavailable); data and config errors are never retried.")
    pool: str | None = Field(None, pattern=POOL.pattern, description="Dagster concurrency pool "
                             "of every step (limits in dagster.yaml or the UI).")
    row_counts: Literal["ends", "all"] = Field(
        "ends", description="Which steps count their rows (run summary, `dagster/row_count`): "
        "\"ends\" counts what each extract reads and each load writes (free: it rides on the "
        "write); \"all\" also counts the transforms in between, one observe() each, which "
        "costs up to 7% of a join-and-aggregate pipeline's time (measured, TPC-H, 6M rows).")
    steps: list[StepSpec] = Field(min_length=1, description="The steps, run in order.")

