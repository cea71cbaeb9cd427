"""What passes between a pipeline's ops: the lazy DataFrame with the row counter riding on it
(Spark's observe(), filled by the action that runs anyway), and how its metadata is shown."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
from pyspark.sql import DataFrame, Observation
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from pipeline_defs.common import secrets
from pipeline_defs.config.dataflow import safe_name

OBSERVE_WAIT_S = 2.0


# ---------------------------------------------------------------- values passed between ops
@dataclass(frozen=True)
class StepOutput:
    """An op's output: the lazy DataFrame and the row counter riding on it."""

    df: DataFrame
    step: int
    op_name: str
    observation: Observation | None = None
    parents: tuple[StepOutput, ...] = ()
    pending: tuple = ()  # a validation group's steps, evaluated by its first op, reported by each
    columns: tuple = ()  # an extract's columns: ((Spark's column id, (asset key, name)), ...)

    def lineage(self) -> list[StepOutput]:
        seen: dict[int, StepOutput] = {}
        todo = [self]
        while todo:
            o = todo.pop()
            if o.step not in seen:
                seen[o.step] = o
                todo.extend(o.parents)
        return [seen[k] for k in sorted(seen)]


def observed_rows(obs: Observation | None, wait: float = 0.0) -> int | None:
    """The observed row count, if the action that fills it has run (never blocks for long).

    None when it has not run, or when an action that never reached the observed node filled
    it (Spark then leaves an empty row): a missing count, never a wrong one."""
    if obs is None or obs._jo is None:
        return None
    deadline = time.monotonic() + wait
    future = obs._jo.future()
    while not future.isCompleted():
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
    if obs._jo.getRow().size() == 0:
        return None
    return int(obs.get.get("rows", 0))


def observe(df: DataFrame, run_id: str, op_name: str) -> tuple[DataFrame, Observation]:
    obs = Observation(f"rows_{op_name}_{run_id.replace('-', '')[:12]}")
    out = df.observe(obs, F.count(F.lit(1)).alias("rows"))
    obs.dataframe_id = df._jdf.id()  # with the name, the key Spark completes it by
    return out, obs


def _done(obs: Observation) -> bool:
    return obs._jo is not None and obs._jo.future().isCompleted()


@contextmanager
def counted_by_this_action(spark, outputs: list[StepOutput]):
    """Around a Spark action over these steps' outputs: the row counts riding on them that
    this action fills, it fills with what it saw. A failed action (a write the database cut
    off, a retried step's first attempt) completes them too, with what it had read by then;
    Spark never fills an Observation twice, so those are armed again, and the action that
    succeeds (the retry) counts its own rows."""
    waiting = [o.observation for o in outputs
               if o.observation is not None and not _done(o.observation)]
    try:
        yield
    except BaseException:
        manager = spark._jsparkSession.observationManager()
        for obs in waiting:
            if _done(obs) and getattr(obs, "dataframe_id", None) is not None:
                obs._jo = spark._jvm.org.apache.spark.sql.Observation(obs._name)
                manager.register(obs._jo, obs.dataframe_id)
        raise


# ---------------------------------------------------------------- metadata helpers
def table_schema(schema: StructType) -> dg.TableSchema:
    return dg.TableSchema(columns=[
        dg.TableColumn(f.name, f.dataType.simpleString(),
                       constraints=dg.TableColumnConstraints(nullable=f.nullable))
        for f in schema.fields])


def cell(v):
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


def plain(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, list) and v and all(isinstance(r, dict) for r in v) and \
            len({tuple(r) for r in v}) == 1:  # rows of one shape: a table in the UI
        return dg.MetadataValue.table(
            records=[dg.TableRecord({k: cell(x) for k, x in r.items()}) for r in v],
            schema=dg.TableSchema(columns=[dg.TableColumn(k, "string") for k in v[0]]))
    return dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else str(v)


def sanitized(config: dict) -> dict:
    """The step config as shown in failures: secret-looking keys masked, at any depth."""
    def mask(k: str, v):
        if isinstance(v, dict):
            return sanitized(v)
        if secrets.SECRET_KEY.search(k) and not k.lower().endswith("path"):
            return secrets.MASK
        return v
    return {k: mask(k, v) for k, v in config.items()}


# ---------------------------------------------------------------- the job of one pipeline
def input_name(name: str) -> str:
    return f"ref_{safe_name(name)}"


def _is(cls):
    return lambda _context, value: isinstance(value, cls)


SPARK_DATAFRAME = dg.DagsterType(
    name="SparkDataFrame", type_check_fn=_is(StepOutput),
    description="A Spark DataFrame passed on as a lazy plan (nothing is computed between "
    "steps), with the row counter riding on it.")
LOADED_TABLE = dg.DagsterType(
    name="LoadedTable", type_check_fn=_is(dict),
    description="What a load wrote: its location and the rows written (its materialization "
    "carries schema, counts and the table's own metrics).")


def produced_metadata(produced: dict) -> dict:
    """A trained model's materialization metadata: its metrics as numbers (Dagster plots
    them across materializations), where it is, the MLflow run and version."""
    meta: dict = {f"metric/{k}": round(float(v), 4)
                  for k, v in produced.get("metrics", {}).items()}
    for k in ("model_uri", "name", "version", "mlflow_run_id", "experiment",
              "tracking_uri", "model_path", "algorithm", "target", "evaluated_on"):
        if produced.get(k) is not None:
            meta[k] = str(produced[k])
    for k in ("rows_train", "rows_test"):
        if produced.get(k) is not None:
            meta[k] = int(produced[k])
    if produced.get("aliases"):
        meta["aliases"] = ", ".join(produced["aliases"])
    if produced.get("mlflow_url"):
        meta["mlflow"] = dg.MetadataValue.url(produced["mlflow_url"])
    if produced.get("params"):
        meta["params"] = dg.MetadataValue.json(produced["params"])
    if produced.get("features"):
        meta["features"] = ", ".join(produced["features"])
    return meta


def config_summary(raw: dict, width: int = 140) -> str:
    """The step's config on one line, secrets masked: `condition="amount > 0"`."""
    parts = [f"{k}={json.dumps(v, default=str)}" for k, v in sanitized(raw).items()]
    text = ", ".join(parts)
    return text if len(text) <= width else text[:width - 1] + "…"
