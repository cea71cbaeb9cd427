"""Where models go and come from: MLflow's tracking server and registry, or a path.

MLflow is used where it is configured (`MLFLOW_TRACKING_URI`), else a local store:
`sqlite:///<PIPELINE_MLFLOW_DIR, default ./mlruns>/mlflow.db`, artifacts beside it
(`mlflow ui --backend-store-uri` on the same URI shows it). MLflow is imported only when a
step uses it."""
from __future__ import annotations

import os
import re
import threading
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from pyspark.ml import PipelineModel

from pipeline_defs.steps.errors import StepDataError

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<ver>[^/]+))?/?$")
_LOCK = threading.Lock()  # MLflow's fluent API: process-wide URIs and active run


def local_dir() -> str:
    return os.path.abspath(os.environ.get("PIPELINE_MLFLOW_DIR", "mlruns"))


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{local_dir()}/mlflow.db"


def shown(uri: str) -> str:
    """A tracking URI fit for logs and metadata: no user or password."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    return uri


def client():
    """An MlflowClient on the tracking URI (the SQLite store's directory made first)."""
    try:
        import mlflow
    except ImportError:  # pragma: no cover - mlflow is a dependency of the ml extra
        raise StepDataError("MLflow is not installed: pip install 'pipeline-defs[ml]', or "
                            "save the model with modelPath only.") from None
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI"):
        os.makedirs(local_dir(), exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(c, name: str) -> str:
    """The experiment's id, created on first use (its artifacts beside the local store)."""
    with _LOCK:
        exp = c.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            location = "file://" + os.path.join(local_dir(), "artifacts")
        try:
            return c.create_experiment(name, artifact_location=location)
        except Exception:  # noqa: BLE001 - another process created it first
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id


@dataclass(frozen=True)
class ModelRef:
    """A model as a step names it: `models:/name[@alias|/version|/latest]` or a path."""
    text: str
    name: str | None = None  # registered model name
    alias: str | None = None
    version: str | None = None  # a number, or "latest"

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        if text.startswith("models:/"):
            m = _MODEL_URI.match(text)
            if not m:
                raise ValueError(f"'{text}' is not a registry URI: write models:/NAME@ALIAS, "
                                 "models:/NAME/VERSION or models:/NAME/latest")
            return cls(text, m["name"], m["alias"], m["ver"] or "latest")
        if "://" not in text and text.startswith("models:"):
            raise ValueError(f"'{text}': a registry URI starts with models:/")
        return cls(text)

    @property
    def location(self) -> str:
        """The model as an asset: the registered model (any version), or the path."""
        return f"models:/{self.name}" if self.name else self.text


def resolve(ref: ModelRef) -> tuple[str, str | None]:
    """(the exact model URI to load, its version) for a registry reference; a path as is.
    Errors name the registry and what it has."""
    if not ref.name:
        return ref.text, None
    c = client()
    try:
        if ref.alias:
            v = c.get_model_version_by_alias(ref.name, ref.alias)
        elif ref.version == "latest":
            versions = c.search_model_versions(f"name = '{ref.name}'")
            if not versions:
                raise LookupError
            v = max(versions, key=lambda x: int(x.version))
        else:
            v = c.get_model_version(ref.name, ref.version)
    except Exception:  # noqa: BLE001 - MLflow raises MlflowException for all of these
        known = [m.name for m in c.search_registered_models(max_results=20)]
        what = f"alias '{ref.alias}'" if ref.alias else f"version {ref.version}"
        has = f"registered model '{ref.name}' has no {what}" if ref.name in known else \
            f"has no registered model '{ref.name}'"
        raise StepDataError(
            f"model '{ref.text}': MLflow's registry at {shown(tracking_uri())} {has}. "
            f"Registered models: "
            f"{', '.join(known) or 'none'}. Train it first (trainModel with "
            "registeredModelName), or fix the name.") from None
    return f"models:/{ref.name}/{v.version}", v.version


_LOADED: dict[str, PipelineModel] = {}


def load(ref: ModelRef, spark) -> tuple[PipelineModel, str | None]:
    """The fitted pipeline a reference names, and its registry version (a registry version
    never changes: kept per process)."""
    uri, version = resolve(ref)
    key = f"{tracking_uri()} {uri}"
    if version is not None:
        with _LOCK:
            if key in _LOADED:
                return _LOADED[key], version
        import logging

        import mlflow
        import mlflow.spark
        # "URI ... does not point to the current DFS ... Will attempt to upload": its normal way
        logging.getLogger("mlflow.spark").setLevel(logging.WARNING)
        with _LOCK:  # the fluent API reads the process-wide URIs
            mlflow.set_tracking_uri(tracking_uri())
            mlflow.set_registry_uri(tracking_uri())
            model = mlflow.spark.load_model(uri, dfs_tmpdir=_tmpdir(spark))
            _LOADED[key] = model
        return model, version
    try:
        return PipelineModel.load(uri), None
    except Exception as e:  # noqa: BLE001 - a missing path reads as Py4J's error
        raise StepDataError(f"model '{uri}': no Spark ML model can be read there ("
                            f"{str(e).splitlines()[0][:200]}). Give the modelPath a trainModel "
                            "step saved to, or a models:/ URI.") from None


def _tmpdir(spark) -> str:
    """A scratch directory on the local filesystem for MLflow's copies (Spark reads local)."""
    base = spark.conf.get("spark.local.dir", None) or os.environ.get("TMPDIR", "/tmp")
    return os.path.join(base.split(",")[0], f"pipeline-defs-mlflow-{uuid.uuid4().hex[:8]}")


def save_to_path(model: PipelineModel, path: str, spark) -> None:
    """Save a fitted pipeline at `path`, replacing what is there only once it is whole: written
    beside it first, then swapped in by renames (Hadoop's FileSystem: local, HDFS, S3A)."""
    jvm = spark._jvm
    target = jvm.org.apache.hadoop.fs.Path(path)
    fs = target.getFileSystem(spark._jsc.hadoopConfiguration())
    tmp = jvm.org.apache.hadoop.fs.Path(f"{path.rstrip('/')}.writing-{uuid.uuid4().hex[:8]}")
    old = jvm.org.apache.hadoop.fs.Path(f"{path.rstrip('/')}.replaced-{uuid.uuid4().hex[:8]}")
    try:
        model.write().save(tmp.toString())
        had = fs.exists(target)
        if had and not fs.rename(target, old):
            raise StepDataError(f"modelPath '{path}': could not move the old model aside.")
        if not fs.rename(tmp, target):
            if had:
                fs.rename(old, target)
            raise StepDataError(f"modelPath '{path}': could not move the new model in place.")
        if had:
            fs.delete(old, True)
    finally:
        if fs.exists(tmp):
            fs.delete(tmp, True)


def log_model(model: PipelineModel, name: str, alias: str | None, experiment: str, *,
              run_name: str, tags: dict, params: dict, metrics: dict, spark) -> dict:
    """Log a fitted pipeline to MLflow in a run of `experiment` (params, metrics) and register
    it as a new version of `name`; `alias` then points at that version. Returns what the
    model asset shows: the MLflow run id, the version, its URI."""
    import mlflow
    import mlflow.spark
    import pyspark

    c = client()
    exp = experiment_id(c, experiment)
    with _LOCK:  # the fluent API's tracking URI and active run are process-wide
        mlflow.set_tracking_uri(tracking_uri())
        mlflow.set_registry_uri(tracking_uri())
        with mlflow.start_run(experiment_id=exp, run_name=run_name, tags=tags) as run:
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            info = mlflow.spark.log_model(
                model, "model", registered_model_name=name, dfs_tmpdir=_tmpdir(spark),
                # given, not inferred: inference imports and scans the whole environment
                pip_requirements=[f"pyspark=={pyspark.__version__}", "pipeline-defs"])
    version = str(info.registered_model_version)
    c.set_model_version_tag(name, version, "dagster.run_id", tags.get("dagster.run_id", ""))
    if alias:
        c.set_registered_model_alias(name, alias, version)
    out = {"name": name, "version": version, "model_uri": f"models:/{name}/{version}",
           "mlflow_run_id": run.info.run_id, "experiment": experiment,
           "tracking_uri": shown(tracking_uri()), "aliases": [alias] if alias else []}
    if shown(tracking_uri()).startswith(("http://", "https://")):  # MLflow's UI, that version
        out["mlflow_url"] = f"{shown(tracking_uri()).rstrip('/')}/#/models/{name}/versions/" \
                            f"{version}"
    return out


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)
