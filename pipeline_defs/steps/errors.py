"""Errors of steps that run on Spark, and how Spark's and the JVM's errors read to a person."""
from __future__ import annotations

import re

from pyspark.errors import PySparkException

from pipeline_defs.common.errors import PipelineError


class StepDataError(PipelineError):
    """The data does not fit the step (a missing column, an incompatible type)."""


def spark_error_summary(e: BaseException) -> str:
    """One readable line from a Spark/Py4J error instead of a JVM stack trace."""
    text = str(e) if isinstance(e, PySparkException) else (str(e) or type(e).__name__)
    text = text.split("\n\tat ", 1)[0].split("\nJVM stacktrace:", 1)[0]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # Py4J's wrapper says which proxy object's method was called: nothing for a person
    return _PY4J_CALL.sub("", " ".join(lines[:6]))[:1500]


_PY4J_CALL = re.compile(r"^An error occurred while calling [\w.:$]+\. ?: ?")


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


# ---------------------------------------------------------------- transient or not
# What a retry may cure is decided by what failed: the exception's type (Python's, or the
# JVM's class and its superclasses), its SQLSTATE, an HTTP status read from the response.
# Never by words or digits of a message: `arr_delay_504 > 503` is a missing column.

# SQLSTATE classes and codes of a connection lost, a server starting or stopping, a conflict
# between transactions: worth another attempt
_TRANSIENT_STATES = ("08", "57P01", "57P02", "57P03", "40001", "40P01", "53300", "HYT00")
# SQLSTATE classes of a wrong statement, wrong data or a refused login: never
_PERMANENT_STATES = ("0A", "21", "22", "23", "26", "28", "2B", "2D", "34", "3D", "3F", "42",
                     "44", "XX")
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})

# JVM classes (or their superclasses) of a network failure or a service saying "later"
_TRANSIENT_JVM = frozenset({
    "java.net.ConnectException", "java.net.SocketTimeoutException",
    "java.net.NoRouteToHostException", "java.net.SocketException",
    "java.sql.SQLTransientException", "java.sql.SQLRecoverableException",
    "org.apache.kafka.common.errors.RetriableException",
    "org.apache.hadoop.fs.s3a.AWSServiceThrottledException",
    "org.apache.hadoop.fs.s3a.AWSStatus500Exception",
    "org.apache.hadoop.ipc.RetriableException", "org.apache.hadoop.ipc.StandbyException",
    "org.apache.hadoop.net.ConnectTimeoutException",
})
_PERMANENT_JVM = frozenset({
    "java.io.FileNotFoundException",
    "java.nio.file.AccessDeniedException", "java.lang.IllegalArgumentException",
    "java.lang.NumberFormatException", "java.lang.ArithmeticException",
    "org.apache.spark.SparkUpgradeException", "java.net.UnknownHostException",
    "javax.net.ssl.SSLHandshakeException", "java.security.cert.CertificateException",
    "org.apache.kafka.common.errors.AuthenticationException",
    "org.apache.kafka.common.errors.AuthorizationException",
})
# S3 error codes of "slow down" (read from the response, as the SDK gives them)
_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                        "ServiceUnavailable", "InternalError", "RequestLimitExceeded"})


def _state(state: str | None) -> bool | None:
    if not state:
        return None
    if state.startswith(_TRANSIENT_STATES):
        return True
    return False if state.startswith(_PERMANENT_STATES) else None


def _status(code) -> bool | None:
    try:
        code = int(code)
    except (TypeError, ValueError):
        return None
    return True if code in _TRANSIENT_HTTP else False if 400 <= code < 500 else None


def _python(e: BaseException) -> bool | None:
    """True (transient), False (never) or None (says nothing) for one Python exception."""
    if isinstance(e, PipelineError):
        return e.transient
    if type(e).__name__ in ("ValidationFailed", "ConfigError"):
        return False
    if isinstance(e, PySparkException):
        return _state(_call(e, "getSqlState"))
    if isinstance(e, (ConnectionError, TimeoutError)):  # refused, reset, aborted, timed out
        return True
    judge = _CLIENTS.get(type(e).__module__.split(".")[0])
    return judge(e) if judge else None


def _requests(e) -> bool | None:
    import requests
    if isinstance(e, requests.exceptions.SSLError):
        return False
    if isinstance(e, (requests.ConnectionError, requests.Timeout)):
        return True
    return _status(getattr(getattr(e, "response", None), "status_code", None))


def _urllib(e) -> bool | None:
    if hasattr(e, "code"):  # HTTPError: the response's status
        return _status(e.code)
    return True if isinstance(getattr(e, "reason", None), (ConnectionError, TimeoutError)) \
        else None


def _hvac(e) -> bool:
    import hvac.exceptions as hv
    return isinstance(e, (hv.VaultDown, hv.InternalServerError, hv.BadGateway,
                          hv.RateLimitExceeded))


def _botocore(e) -> bool | None:
    from botocore import exceptions as be
    if isinstance(e, (be.EndpointConnectionError, be.ConnectionClosedError,
                      be.ReadTimeoutError, be.ConnectTimeoutError)):
        return True
    if isinstance(e, be.ClientError):
        if e.response.get("Error", {}).get("Code") in _THROTTLED:
            return True
        return _status(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return None


def _psycopg(e) -> bool | None:
    state = getattr(getattr(e, "diag", None), "sqlstate", None)
    if state:
        return _state(state)
    return True if type(e).__name__ == "OperationalError" else None  # no server answer


def _pymysql(e) -> bool | None:
    if type(e).__name__ == "OperationalError" and e.args:  # client/server error numbers
        return e.args[0] in (1040, 1205, 1213, 2003, 2006, 2013)
    return None


def _confluent(e) -> bool | None:
    err = e.args[0] if e.args else None
    return bool(err.retriable()) if hasattr(err, "retriable") else None


_CLIENTS = {"requests": _requests, "urllib": _urllib, "hvac": _hvac, "botocore": _botocore,
            "psycopg": _psycopg, "pymysql": _pymysql, "confluent_kafka": _confluent}


def _call(obj, method: str):
    try:
        value = getattr(obj, method)()
        return str(value) if value is not None else None
    except Exception:  # noqa: BLE001 - not that kind of exception, or the gateway is gone
        return None


def _jvm(je) -> bool | None:
    """The verdict for one JVM Throwable: its class and superclasses, its SQLSTATE (an
    SQLException's or a Spark error's), its HTTP status (an AWS SDK service exception)."""
    try:
        names, c = set(), je.getClass()
        while c is not None:
            names.add(str(c.getName()))
            c = c.getSuperclass()
    except Exception:  # noqa: BLE001 - the gateway is gone: nothing to read
        return None
    if names & _PERMANENT_JVM:
        return False
    if "java.sql.SQLException" in names or "org.apache.spark.SparkThrowable" in names or \
            _call(je, "getSqlState") is not None:
        verdict = _state(_call(je, "getSQLState") or _call(je, "getSqlState"))
        if verdict is not None:
            return verdict
    if names & _TRANSIENT_JVM:
        return True
    if "software.amazon.awssdk.awscore.exception.AwsServiceException" in names or \
            "org.apache.hadoop.fs.s3a.AWSServiceIOException" in names:
        code = _call(je, "awsErrorDetails") and _call(je.awsErrorDetails(), "errorCode")
        if code in _THROTTLED:
            return True
        return _status(_call(je, "statusCode"))
    return None


def _chain(e: BaseException):
    """Every Python exception of the chain (causes and contexts), and for each one that
    carries a JVM Throwable, that Throwable and its causes."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield _python, e
        # Py4J's errors carry `java_exception`, PySpark's captured ones `_origin`
        je, depth = getattr(e, "java_exception", None) or getattr(e, "_origin", None), 0
        while je is not None and depth < 20:
            yield _jvm, je
            je, depth = _cause(je), depth + 1
        e = e.__cause__ or e.__context__


def _cause(je):
    try:
        cause = je.getCause()
        return None if cause is None or cause.equals(je) else cause
    except Exception:  # noqa: BLE001
        return None


def root_cause(e: BaseException, said: str) -> str | None:
    """The deepest JVM cause of a Spark error in one line ('java.net.ConnectException:
    Connection refused'), when `said` (the error's summary) does not already say it: a
    failed write's summary is Spark's wrapper (TASK_WRITE_FAILED), its cause is the news."""
    deepest = None
    for judge, x in _chain(e):
        if judge is _jvm:
            deepest = x
    if deepest is None:
        return None
    message = (_call(deepest, "getMessage") or "").strip().splitlines()
    first = " ".join(message[0].split()) if message else ""
    name = _call(deepest.getClass(), "getName") if hasattr(deepest, "getClass") else None
    flat = " ".join(said.split())
    if (first and first in flat) or "Traceback (most recent call last)" in first or \
            (not first and (not name or name in flat)):
        return None  # said already, or a Python worker's error (its summary has the error)
    return f"{name or 'cause'}: {first}"[:200].rstrip(": ")


def transient(e: BaseException) -> bool:
    """Would trying the step again likely succeed? Yes when something in the error's chain
    is a network failure or a service's "later" (a type, an SQLSTATE, an HTTP status), and
    nothing in it is a data, analysis, config or login error, which a retry never cures."""
    found = False
    for judge, x in _chain(e):
        verdict = judge(x)
        if verdict is False:
            return False
        found = found or bool(verdict)
    return found
