"""Where models go and come from: MLflow's tracking server and registry, or a path.

MLflow is used where it is configured (`MLFLOW_TRACKING_URI`), else a local store:
`sqlite:///<PIPELINE_MLFLOW_DIR, default ./mlruns>/mlflow.db`, artifacts beside it
(`mlflow ui --backend-store-uri` on the same URI shows it). MLflow is imported only when a
step uses it."""
from __future__ import annotations

import os
import re
import tempfile
import threading
import uuid
from collections import OrderedDict
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
    if parts.username or parts.password or parts.query:  # tokens ride in queries too
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    return uri


def client():
    """An MlflowClient on the tracking URI (the SQLite store's directory made first)."""
    try:
        import mlflow
    except ImportError:  # pragma: no cover - mlflow is a dependency of the ml extra
        raise StepDataError("MLflow is not installed: pip install 'pipeline-defs[ml]', or "
                            "save the model with modelPath only.") from None
    # MLflow prints "View run ... at: <tracking URI>" for a server: with its credentials
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
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


def _absent(e: Exception) -> bool:
    """MLflow's answer "no such model, version or alias" (not a refused login, not a server
    that is down: those are errors of their own)."""
    return getattr(e, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST",
                                              "INVALID_PARAMETER_VALUE")


def resolve(ref: ModelRef):
    """(the exact model URI to load, its version, the version's MLflow run id) for a registry
    reference; a path as is. A model, version or alias that is not there is an error naming
    the registry and what it holds."""
    if not ref.name:
        return ref.text, None, None
    from mlflow.exceptions import MlflowException
    c = client()
    try:
        if ref.alias:
            v = c.get_model_version_by_alias(ref.name, ref.alias)
        elif ref.version == "latest":
            versions = c.search_model_versions(f"name = '{ref.name}'")
            if not versions:
                raise StepDataError(_not_there(c, ref))
            v = max(versions, key=lambda x: int(x.version))
        else:
            v = c.get_model_version(ref.name, ref.version)
    except MlflowException as e:
        if not _absent(e):
            raise
        raise StepDataError(_not_there(c, ref)) from None
    return f"models:/{ref.name}/{v.version}", str(v.version), v.run_id


def _not_there(c, ref: ModelRef) -> str:
    from mlflow.exceptions import MlflowException
    try:
        model = c.get_registered_model(ref.name)
    except MlflowException as e:
        if not _absent(e):
            raise
        model = None
    where = f"model '{ref.text}': MLflow's registry at {shown(tracking_uri())}"
    if model is None:
        some = [m.name for m in c.search_registered_models(max_results=20)]
        return (f"{where} has no registered model '{ref.name}' (some it has: "
                f"{', '.join(some) or 'none'}). Train it first (trainModel with "
                "registeredModelName), or fix the name.")
    what = f"alias '{ref.alias}'" if ref.alias else f"version {ref.version}"
    aliases = ", ".join(sorted(getattr(model, "aliases", {}) or {})) or "none"
    return (f"{where}: registered model '{ref.name}' has no {what} (its aliases: {aliases}). "
            "Point the alias at a version (evaluateModel's promoteTo, trainModel's alias), "
            "or name one that exists.")


_LOADED: OrderedDict[str, PipelineModel] = OrderedDict()
_KEEP = 8  # loaded registry versions kept per process


def load(ref: ModelRef, spark) -> tuple[PipelineModel, str | None]:
    """The fitted pipeline a reference names, and its registry version. A registry version
    never changes (its MLflow run neither): kept per process, the last _KEEP used."""
    uri, version, run_id = resolve(ref)
    if version is None:
        try:
            return PipelineModel.load(uri), None
        except Exception as e:  # noqa: BLE001 - a missing path reads as Py4J's error
            raise StepDataError(f"model '{uri}': no Spark ML model can be read there ("
                                f"{str(e).splitlines()[0][:200]}). Give the modelPath a "
                                "trainModel step saved to, or a models:/ URI.") from None
    key = f"{tracking_uri()} {uri} {run_id}"
    with _LOCK:
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key], version
    import logging

    import mlflow
    import mlflow.spark
    # "URI ... does not point to the current DFS ... Will attempt to upload": its normal way
    logging.getLogger("mlflow.spark").setLevel(logging.WARNING)
    with _LOCK, tempfile.TemporaryDirectory(prefix="pipeline-defs-model-") as tmp:
        mlflow.set_tracking_uri(tracking_uri())  # the fluent API reads process-wide URIs
        mlflow.set_registry_uri(tracking_uri())
        # the model is read whole into the JVM: its downloaded copies can go at once
        os.makedirs(os.path.join(tmp, "download"))
        model = mlflow.spark.load_model(uri, dfs_tmpdir=os.path.join(tmp, "dfs"),
                                        dst_path=os.path.join(tmp, "download"))
        _LOADED[key] = model
        while len(_LOADED) > _KEEP:
            _LOADED.popitem(last=False)
    return model, version


def save_to_path(model: PipelineModel, path: str, spark) -> None:
    """Save a fitted pipeline at `path`, replacing what is there only once it is whole: written
    beside it first, then swapped in by renames (Hadoop's FileSystem: local and HDFS rename
    atomically; on S3A a rename is a copy, so a reader may briefly find no model)."""
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
        try:
            moved = fs.rename(tmp, target)
        except Exception:  # noqa: BLE001 - put the old model back whatever went wrong
            moved = False
        if not moved:
            if had and not fs.rename(old, target):
                raise StepDataError(f"modelPath '{path}': the new model could not be moved "
                                    f"in place, nor the old one back: it is at {old}.")
            raise StepDataError(f"modelPath '{path}': could not move the new model in place "
                                "(the old one is still there).")
        if had:
            fs.delete(old, True)
    finally:
        if fs.exists(tmp):
            fs.delete(tmp, True)


def log_model(model: PipelineModel, name: str, alias: str | None, experiment: str, *,
              run_name: str, tags: dict, params: dict, metrics: dict) -> dict:
    """Log a fitted pipeline to MLflow in a run of `experiment` (params, metrics) and register
    it as a new version of `name`; `alias` then points at that version. Returns what the
    model asset shows: the MLflow run id, the version, its URI."""
    import mlflow
    import mlflow.spark
    import pyspark

    c = client()
    exp = experiment_id(c, experiment)
    # the fluent API's tracking URI and active run are process-wide; the model's copies on
    # the way to the store go once it is logged
    with _LOCK, tempfile.TemporaryDirectory(prefix="pipeline-defs-model-") as tmp:
        mlflow.set_tracking_uri(tracking_uri())
        mlflow.set_registry_uri(tracking_uri())
        with mlflow.start_run(experiment_id=exp, run_name=run_name, tags=tags) as run:
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            info = mlflow.spark.log_model(
                model, "model", registered_model_name=name, dfs_tmpdir=tmp,
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
