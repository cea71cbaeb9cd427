"""Errors of steps that run on Spark, and how Spark's and the JVM's errors read to a person."""
from __future__ import annotations

import re

from pyspark.errors import PySparkException

from pipeline_defs.errors import PipelineError


class StepDataError(PipelineError):
    """The data does not fit the step (a missing column, an incompatible type)."""


def spark_error_summary(e: BaseException) -> str:
    """One readable line from a Spark/Py4J error instead of a JVM stack trace."""
    text = str(e) if isinstance(e, PySparkException) else (str(e) or type(e).__name__)
    text = text.split("\n\tat ", 1)[0].split("\nJVM stacktrace:", 1)[0]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(lines[:6])[:1500]


# Errors that no pipeline file can cause: a bug of this product (or of Spark) to report.
_INTERNAL_PY = (AssertionError, AttributeError, TypeError, KeyError, IndexError, NameError,
                ImportError, ZeroDivisionError)
_INTERNAL_JVM = ("java.lang.AssertionError", "java.lang.NullPointerException",
                 "java.lang.IllegalStateException", "java.lang.ClassCastException",
                 "scala.MatchError", "java.lang.NoSuchMethodError", "py4j.Py4JException")


def internal_error(e: BaseException) -> str | None:
    """'java.lang.AssertionError: assertion failed' when `e` is an internal error, else None."""
    if isinstance(e, PipelineError):
        return None
    if isinstance(e, PySparkException):
        cls = e.getCondition() if hasattr(e, "getCondition") else e.getErrorClass()
        if cls and cls.startswith("INTERNAL_ERROR"):
            return f"Spark {cls}: {spark_error_summary(e)[:300]}"
    je = getattr(e, "java_exception", None)
    if je is not None:
        try:
            name = str(je.getClass().getName())
            msg = str(je.getMessage() or "").strip().splitlines()
        except Exception:  # noqa: BLE001 - the gateway itself failed
            return f"{type(e).__name__}: {str(e)[:200]}"
        return f"{name}: {msg[0] if msg else '(no message)'}" if name in _INTERNAL_JVM else None
    if type(e).__name__ == "Py4JError" or isinstance(e, _INTERNAL_PY):
        text = str(e).strip()
        return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
    return None


def missing_columns(df, columns, field: str) -> None:
    """Raise StepDataError naming the columns the input lacks."""
    have = set(df.columns)
    gone = [c for c in columns if c not in have]
    if gone:
        raise StepDataError(f"{field} names {', '.join(map(repr, gone))}, which the input does "
                            f"not have. Columns: {', '.join(df.columns)}.")


# What a retry may cure: the service could not be reached, dropped the connection, or said it
# is busy. Read from the whole error text (Python and JVM), never from a data or config error.
_TRANSIENT = re.compile(
    r"connection refused|connection reset|broken pipe|communications link failure|"
    r"could not be reached|connection (?:attempt )?(?:failed|timed out)|sockettimeout|"
    r"read timed out|connect timed out|SQLState:? ?(?:08\w{3}|57P03)|\b(?:502|503|504)\b|"
    r"service ?unavailable|slow ?down|throttl|broker(?:notavailable| not available)|"
    r"leader_not_available|networkexception|the database system is starting up",
    re.IGNORECASE)


def transient(e: BaseException) -> bool:
    """Would trying the step again likely succeed (a network or service hiccup)? Data and
    config errors (a failed `fail` validation, a missing column, a bad key) never are."""
    if isinstance(e, StepDataError) or type(e).__name__ in ("ValidationFailed", "ConfigError"):
        return False
    texts, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        texts.append(f"{type(e).__name__}: {e}")
        je = getattr(e, "java_exception", None)
        if je is not None:
            try:
                texts.append(str(je.toString()))
                cause = je.getCause()
                while cause is not None:
                    texts.append(str(cause.toString()))
                    cause = cause.getCause()
            except Exception:  # noqa: BLE001 - the gateway is gone: judge what we have
                pass
        e = e.__cause__ or e.__context__
    return bool(_TRANSIENT.search("\n".join(texts)))
