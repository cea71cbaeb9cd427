"""featureEngineering: model features built on Spark ML, fitted once.

The step fits its features on its input (a scaler's mean, a one-hot's categories, k-means'
centres) and applies them. The fitted pipeline is kept for the run and named in the metadata
of every column it writes, so a later trainModel saves it with the model it trains: scoring
applies the same fitted features to new rows and never refits them."""
from __future__ import annotations

import itertools
import json
import threading
from collections import OrderedDict
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeans
from pyspark.ml.feature import (
    Bucketizer,
    Imputer,
    MinMaxScaler,
    OneHotEncoder,
    StandardScaler,
    StringIndexer,
    VectorAssembler,
)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType, StringType

from pipeline_defs.config.base import FormatModel
from pipeline_defs.config.model import StepModel
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.errors import StepDataError, missing_columns
from pipeline_defs.steps.ml.stages import INTERNAL, ColumnOps, GroupAggregate
from pipeline_defs.steps.registry import step

META_KEY = "pipeline_defs.features"
"""Column metadata: the ids of the fitted feature pipelines that wrote the column."""

_FITTED: OrderedDict[str, tuple[PipelineModel, tuple[str, ...]]] = OrderedDict()
_LOCK = threading.Lock()
_SEQ = itertools.count(1)
_KEEP = 64  # fitted pipelines kept per process (a run uses a few)


class _Feature(FormatModel):
    name: str = Field(description="The output column.")


class Binning(_Feature):
    """Buckets of a numeric column (Spark's Bucketizer): [a, b) each, the last closed."""
    type: Literal["binning"]
    column: str = Field(description="Numeric column to bucket.")
    bins: list[float | Literal["-inf", "inf"]] = Field(
        min_length=3, description="Bucket edges in increasing order, e.g. [0, 18, 35, 65, "
        "\"inf\"]: buckets [0, 18), [18, 35), [35, 65), [65, inf]. \"-inf\"/\"inf\" for open "
        "ends; a value outside the edges fails the step.")
    labels: list[str] | None = Field(None, description="One label per bucket (else the bucket's "
                                     "index, 0, 1, ...); null values get a null label.")
    handle_invalid: Literal["keep", "skip", "error"] = Field(
        "keep", description="Null or NaN values: keep (a bucket of their own, index = number "
        "of buckets; label null), skip (drop the row), error.")

    @field_validator("bins")
    @classmethod
    def _increasing(cls, v):
        edges = [float(x) for x in v]
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError("bins must increase strictly, e.g. [0, 18, 35, \"inf\"]")
        return edges

    def problems(self):
        if self.labels is not None and len(self.labels) != len(self.bins) - 1:
            return [("labels", f"{len(self.bins)} edges make {len(self.bins) - 1} buckets, "
                     f"but {len(self.labels)} labels are given.", "Give one label per bucket.")]
        return []


class OneHot(_Feature):
    """A category (string, or an integer index 0, 1, ...) as a one-hot vector column: one
    slot per category seen when fitted (strings in alphabetical order); a category not seen
    then, or null, is all zeros."""
    type: Literal["oneHot"]
    column: str = Field(description="The category column (string or integer index).")


class Scaling(_Feature):
    """Numeric columns scaled into one vector column."""
    type: Literal["scaling"]
    columns: list[str] = Field(min_length=1, description="Numeric columns.")
    method: Literal["standard", "minmax"] = Field("standard", description="standard: (x - mean)"
                                                  " / stddev; minmax: into [0, 1].")


class Imputation(_Feature):
    """Missing values (null, NaN) of numeric columns filled, in place."""
    type: Literal["imputation"]
    name: str = Field(description="Names the feature (its columns are filled in place).")
    columns: list[str] = Field(min_length=1, description="Numeric columns to fill in place.")
    strategy: Literal["mean", "median", "mode"] = Field(
        "mean", description="The value filled in, learnt from the data: mean, median (a value "
        "of the column, the lower middle one of an even count; approximate on large data), "
        "mode.")


class Aggregation(_Feature):
    """An aggregate per group joined back onto each row, e.g. each customer's number of
    orders. Computed on the data a model scores (batch only)."""
    type: Literal["aggregation"]
    group_by: list[str] | str = Field(description="Column(s) of the group.")
    expr: str = Field(description="Spark SQL aggregate, e.g. \"count(*)\", \"avg(amount)\".")


class Clustering(_Feature):
    """The cluster of each row (an integer id), learnt by k-means on numeric columns."""
    type: Literal["clustering"]
    algorithm: Literal["kmeans"] = Field("kmeans", description="kmeans.")
    columns: list[str] = Field(min_length=1, description="Numeric columns clustered on.")
    k: int = Field(ge=2, description="Number of clusters.")
    seed: int = Field(1, description="Random seed: the same data and seed give the same ids.")
    max_iter: int = Field(20, ge=1, description="Most iterations.")


Feature = Annotated[Binning | OneHot | Scaling | Imputation | Aggregation | Clustering,
                    Field(discriminator="type")]


class FeatureEngineering(StepModel):
    """Add model features (binning, oneHot, scaling, imputation, aggregation, clustering),
    each fitted on this step's input; a later trainModel saves the fitted features with its
    model, so scoring reuses them."""
    sql_fields = frozenset({"features.expr"})

    features: list[Feature] = Field(min_length=1, description="The features, in order (one "
                                    "may use an earlier one's column).")

    def needed_columns(self):
        out = []
        made: set[str] = set()
        for i, f in enumerate(self.features):
            cols = [getattr(f, "column", None)] + list(getattr(f, "columns", None) or []) + \
                ([f.group_by] if isinstance(getattr(f, "group_by", None), str) else
                 list(getattr(f, "group_by", None) or []))
            need = [c for c in cols if c and c not in made]
            if need:
                out.append((f"features[{i}]", need))
            made.update([] if isinstance(f, Imputation) else [f.name])
        return out

    def output_columns(self, columns):
        out = dict(columns)
        for f in self.features:
            if isinstance(f, Binning):
                out[f.name.lower()] = "STRING" if f.labels else "DOUBLE"
            elif isinstance(f, (OneHot, Scaling)):
                out[f.name.lower()] = "VECTOR"
            elif isinstance(f, Clustering):
                out[f.name.lower()] = "INT"
            elif isinstance(f, Aggregation):
                out[f.name.lower()] = "UNKNOWN"
        return out

    def problems(self):
        out = []
        for i, f in enumerate(self.features):
            out += [(f"features[{i}].{k}", what, fix) for k, what, fix in
                    (f.problems() if hasattr(f, "problems") else [])]
        names = [f.name for f in self.features if not isinstance(f, Imputation)]
        for n in {n for n in names if names.count(n) > 1}:
            out.append(("features", f"two features write column '{n}'.",
                        "Give each feature its own name."))
        return out


def _stages(i: int, f, df: DataFrame) -> list:
    """The Spark ML stages of feature `i` (estimators are fitted with the rest)."""
    tmp = f"{INTERNAL}f{i}"
    if isinstance(f, Binning):
        idx = tmp if f.labels else f.name
        stages = [Bucketizer(splits=f.bins, inputCol=f.column, outputCol=idx,
                             handleInvalid=f.handle_invalid)]
        if f.labels:
            labels = ", ".join(json.dumps(lbl).replace("'", "\\'") for lbl in f.labels)
            stages.append(ColumnOps(spec=json.dumps({
                "add": [[f.name, f"try_element_at(array({labels}), int(`{idx}`) + 1)"]],
                "drop": [idx]})))
        return stages
    if isinstance(f, OneHot):
        if isinstance(df.schema[f.column].dataType, StringType):
            # unseen -> the indexer's extra last index, the slot the encoder drops
            return [StringIndexer(inputCol=f.column, outputCol=tmp, handleInvalid="keep",
                                  stringOrderType="alphabetAsc"),
                    OneHotEncoder(inputCol=tmp, outputCol=f.name, dropLast=True,
                                  handleInvalid="error"),
                    ColumnOps(spec=json.dumps({"drop": [tmp]}))]
        # the encoder's own slot for invalid indexes is the last one, dropped
        return [OneHotEncoder(inputCol=f.column, outputCol=f.name, dropLast=True,
                              handleInvalid="keep")]
    if isinstance(f, Scaling):
        scaler = StandardScaler(withMean=True, withStd=True) if f.method == "standard" \
            else MinMaxScaler()
        return [VectorAssembler(inputCols=f.columns, outputCol=tmp, handleInvalid="keep"),
                scaler.setInputCol(tmp).setOutputCol(f.name),
                ColumnOps(spec=json.dumps({"drop": [tmp]}))]
    if isinstance(f, Imputation):
        return [Imputer(inputCols=f.columns, outputCols=f.columns, strategy=f.strategy)]
    if isinstance(f, Aggregation):
        keys = [f.group_by] if isinstance(f.group_by, str) else f.group_by
        return [GroupAggregate(spec=json.dumps({"name": f.name, "groupBy": keys,
                                                "expr": f.expr}))]
    # every row keeps its place: one with a missing input gets no cluster (null); k-means
    # itself sees only numbers (a stand-in 0 there, its id then discarded)
    gaps = [f"`{c}` IS NULL OR isnan(double(`{c}`))" for c in f.columns]
    safe = [[f"{tmp}_{j}", f"CASE WHEN {g} THEN 0D ELSE double(`{c}`) END"]
            for j, (c, g) in enumerate(zip(f.columns, gaps, strict=True))]
    return [ColumnOps(spec=json.dumps({"add": safe})),
            VectorAssembler(inputCols=[n for n, _ in safe], outputCol=tmp),
            KMeans(featuresCol=tmp, predictionCol=f.name, k=f.k, seed=f.seed,
                   maxIter=f.max_iter),
            ColumnOps(spec=json.dumps({"add": [[f.name, f"CASE WHEN {' OR '.join(gaps)} THEN "
                                                f"NULL ELSE `{f.name}` END"]],
                                       "drop": [tmp, *(n for n, _ in safe)]}))]


def _check_types(df: DataFrame, cfg: FeatureEngineering) -> None:
    types = {}
    for i, f in enumerate(cfg.features):
        numeric = list(getattr(f, "columns", None) or []) + \
            ([f.column] if isinstance(f, Binning) else [])
        for c in numeric:
            t = types.get(c, df.schema[c].dataType if c in df.columns else None)
            if t is not None and not isinstance(t, NumericType):
                raise StepDataError(f"features[{i}] ({f.type} '{f.name}'): column '{c}' is "
                                    f"{t.simpleString()}, not a number. Cast it first "
                                    "(enrichData) or, for a category, use a oneHot feature.")
        types[f.name] = None


def fitted(uid: str) -> tuple[PipelineModel, tuple[str, ...]] | None:
    """A fitted feature pipeline of this process, and the ids it depends on."""
    with _LOCK:
        return _FITTED.get(uid)


def feature_ids(df: DataFrame, columns) -> list[str]:
    """The fitted feature pipelines behind `columns`, with those they depend on, in the
    order they were fitted."""
    found: set[str] = set()
    todo = [u for c in columns if c in df.columns
            for u in df.schema[c].metadata.get(META_KEY, [])]
    while todo:
        uid = todo.pop()
        if uid in found:
            continue
        found.add(uid)
        entry = fitted(uid)
        if entry:
            todo.extend(entry[1])
    return sorted(found, key=lambda u: int(u.rsplit("-", 1)[-1]))


@step("transform", "featureEngineering", FeatureEngineering, row_level=False)
def feature_engineering(df: DataFrame, cfg: FeatureEngineering, ctx: StepContext) -> DataFrame:
    needed = [c for f, cols in cfg.needed_columns() for c in cols]
    missing_columns(df, needed, "features")
    _check_types(df, cfg)
    ctx.activity = "fitting its features"
    fitted_stages, out = [], df
    for i, f in enumerate(cfg.features):  # one by one: a feature may read an earlier one's
        # column, of a type known then; scaling and k-means learn from complete rows only
        # (a null or NaN would make every mean NaN) and still apply to every row
        learn = out.dropna(subset=f.columns) if isinstance(f, (Scaling, Clustering)) else out
        part = Pipeline(stages=_stages(i, f, out)).fit(learn)
        fitted_stages += part.stages
        out = part.transform(out)
    model = PipelineModel(fitted_stages)
    needs = tuple(feature_ids(df, needed))
    uid = f"{ctx.run_id}-{ctx.step}-{next(_SEQ)}"
    with _LOCK:
        _FITTED[uid] = (model, needs)
        while len(_FITTED) > _KEEP:
            _FITTED.popitem(last=False)
    written = [c for f in cfg.features
               for c in (f.columns if isinstance(f, Imputation) else [f.name])]
    tagged = {c: F.col(c).alias(c, metadata={
        **out.schema[c].metadata, META_KEY: [*out.schema[c].metadata.get(META_KEY, []), uid]})
        for c in dict.fromkeys(written)}
    ctx.metadata["features"] = ", ".join(f"{f.name} ({f.type})" for f in cfg.features)
    return out.select(*[tagged.get(c, F.col(c)) for c in out.columns])
