"""Where a step's Spark work ran: natively (Comet) or on Spark, operator by operator, said once
in the step's metadata; and a step that fails natively is run again on Spark."""
from __future__ import annotations

import dagster as dg

from pipeline_defs.common import secrets
from pipeline_defs.spark import acceleration

NO_REASON = "its input comes from an operator that runs on Spark"


def watch(spark, group: str) -> None:
    acceleration.watch(spark, group)


def metadata(spark, group: str, fallback: str | None = None) -> dict:
    """The step's `spark_engine` (native | native, partly | Spark), its native operators and,
    for those that stayed on Spark, why; {} when the step ran no Spark query itself (a lazy
    transform: its operators run in the query of the step that writes)."""
    seen = acceleration.drain(spark, group)
    if seen is None or not (seen["native"] or seen["spark"]):
        return {}
    on = acceleration.active(spark)
    if fallback is not None:
        engine, on = "Spark (run again after native execution failed)", False
    elif not on:
        engine = "Spark (native execution off)"
    elif not seen["spark"]:
        engine = "native"
    else:
        engine = "native, partly" if seen["native"] else "Spark"
    meta = {"spark_engine": engine}
    if seen["native"]:
        meta["native_operators"] = ", ".join(seen["native"])
    if seen["spark"] and on:
        # Comet's reasons can quote a plan's text: scrubbed like every message
        rows = "\n".join(f"| {op} | {secrets.scrub(why or NO_REASON).replace('|', '/')} |"
                         for op, why in seen["spark"].items())
        meta["spark_operators"] = dg.MetadataValue.md(
            "| operator on Spark | why not native |\n|---|---|\n" + rows)
    if fallback:
        meta["native_failure"] = secrets.scrub(fallback)
    return meta


def run(context, spark, label: str, body):
    """body(), and when it fails inside Comet's native execution, body() again with Comet
    off for the session's queries: (result, the native error or None)."""
    try:
        return body(), None
    except Exception as e:
        why = acceleration.native_failure(e)
        if why is None or not acceleration.active(spark):
            raise
    context.log.warning(secrets.scrub(
        f"{label}: native execution failed ({why}); running it again on Spark, which spills "
        "where Comet's memory would not suffice"))
    with acceleration.turned_off(spark):
        return body(), why


def with_metadata(outputs, extra: dict):
    """The step's outputs with `extra` added to its result's metadata."""
    if not extra:
        return outputs
    many = isinstance(outputs, list)
    out = []
    for o in outputs if many else [outputs]:
        if isinstance(o, dg.Output) and o.output_name == "result":
            o = dg.Output(o.value, o.output_name, metadata={**o.metadata, **extra},
                          data_version=o.data_version, tags=o.tags)
        out.append(o)
    return out if many else out[0]
