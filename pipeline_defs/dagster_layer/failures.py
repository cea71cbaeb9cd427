"""How a step ends when it does not succeed: one clear line naming pipeline, step and file
(the trace stays in the run's event log), retried only when the error is transient; an
interrupt or a terminated run cancels the session's Spark jobs and ends as an interruption."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError  # a run's interruption

from pipeline_defs.common import secrets
from pipeline_defs.common.errors import PipelineError, StepExecutionError
from pipeline_defs.config.loader import (
    LoadedPipeline,
)
from pipeline_defs.dagster_layer.outputs import (
    sanitized,
)
from pipeline_defs.steps.errors import (
    internal_error,
    root_cause,
    spark_error_summary,
    transient,
)


class Failed(Exception):
    """A step's failure, raised once the op has reported the events that go with it (its
    asset check evaluations: an event logged by a failing op is otherwise lost)."""

    def __init__(self, failure: dg.Failure, events: list):
        super().__init__(failure.description)
        self.failure, self.events = failure, events


def step_failure(pipeline: LoadedPipeline, s, e: BaseException, context=None,
             activity: str = "running") -> dg.Failure:
    internal = internal_error(e)
    if context is not None and context.resources.spark.cancelled:
        return dg.Failure(description=f"pipeline '{pipeline.name}', step {s.index} ({s.label})"
                          ": cancelled, the run was terminated; nothing it was writing was "
                          "committed.", metadata={"pipeline": pipeline.name, "step": s.index,
                                                  "cancelled": True}, allow_retries=False)
    if internal:
        if context is not None:  # the trace stays in the event log, not on the terminal
            import traceback
            context.log.error(secrets.scrub("".join(traceback.format_exception(e))))
        run = f" with run id {context.run_id}" if context is not None else ""
        reason = (f"internal error while {activity} ({internal}). This is a bug in "
                  f"pipeline_defs, not in your pipeline file: please report it{run}; the "
                  "trace is in the run's event log.")
    elif isinstance(e, PipelineError):
        reason = str(e)
    else:
        reason = spark_error_summary(e)
        cause = root_cause(e, reason)
        if cause:
            reason += f" (cause: {cause})"
    err = StepExecutionError(pipeline.name, s.index, s.label, secrets.scrub(reason),
                             sanitized(s.raw_config))
    retry = not internal and transient(e)  # a retry policy retries only what it may cure
    if retry and context is not None and context.op_def.retry_policy is not None:
        policy = context.op_def.retry_policy
        if context.retry_number < policy.max_retries:  # said here: the retry event does not
            context.log.warning(secrets.scrub(
                f"attempt {context.retry_number + 1} of step {s.index} ({s.label}) failed "
                f"with a transient error, retried in about {policy.delay or 0:g}s or more: "
                f"{reason}"))
    return dg.Failure(description=secrets.scrub(f"{err} [{pipeline.file}]"),
                      metadata={"pipeline": pipeline.name, "step": s.index,
                                "method": s.label, "error_type": type(e).__name__,
                                "transient": retry,
                                "config": dg.MetadataValue.json(err.config)},
                      allow_retries=retry)


@contextmanager
def _interrupts_cancel_spark(context):
    """While a step runs on the main thread (a run worker), an interrupt (Dagster's
    termination, Ctrl-C) cancels the session's Spark jobs, so the running Spark action
    returns at once; Dagster's own handler would raise in the middle of the py4j call and
    leave the job running in the JVM. Yields the list of interrupts seen."""
    hit: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield hit
        return
    spark = context.resources.spark

    def handler(signo, _frame):
        hit.append(signo)
        if spark._session is not None:
            threading.Thread(target=spark._session.sparkContext.cancelAllJobs,
                             daemon=True).start()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield hit
    finally:
        signal.signal(signal.SIGINT, previous)


def wrap(compute):
    """OpDefinition calls compute_fn(context, inputs_dict) and wants its results yielded.
    A step of a terminated run (an interrupt, or the Spark resource's watcher saw the run
    CANCELING or already marked CANCELED) ends as an interruption, not a failure: Dagster then
    ends the run CANCELED, also when the UI marked it canceled at once."""
    def fn(context, inputs):
        hit: list[int] = []
        try:
            with _interrupts_cancel_spark(context) as hit:
                out = compute(context, **inputs)
        except Failed as e:
            _interrupted(context, hit, e.failure)
            yield from e.events
            raise e.failure from None
        except BaseException as e:
            _interrupted(context, hit, e)
            raise
        _interrupted(context, hit, None)
        # Only the outputs this run selected: a subset of the pipeline's assets, or a graph
        # whose last step is conditional, leaves some (`done`, a quarantine table) unselected,
        # and Dagster refuses an output it did not ask for.
        selected = context.selected_output_names
        yield from (o for o in (out if isinstance(out, list) else [out])
                    if not isinstance(o, dg.Output) or o.output_name in selected)
    return fn


def _interrupted(context, hit: list[int], error: BaseException | None) -> None:
    if not hit and not context.resources.spark.cancelled:
        return
    if isinstance(error, dg.Failure) and error.description:
        context.log.warning(error.description)
    raise DagsterExecutionInterruptedError() from None
