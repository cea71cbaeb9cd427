"""fromS3 / toS3, and Delta and Avro on s3a://, against moto's S3 server on loopback with
credentials and endpoint from the Vault double."""
from __future__ import annotations

import pytest

from pipeline_defs.steps import delta, files
from pipeline_defs_tests.conftest import rows


def cfg(model, **kw):
    return model.model_validate(kw)


@pytest.fixture
def bucket(s3, vault, vault_resource, ctx):
    s3.client.create_bucket(Bucket="lake")
    s3.path = vault.put("secret", "s3/test", s3.secret())
    s3.ctx = lambda method="test.method": ctx(method=method,
                                              read_secret=vault_resource.read_secret,
                                              audit=vault_resource.audit)
    return s3


def test_csv_in_partitioned_parquet_out(bucket, spark):
    bucket.client.put_object(Bucket="lake", Key="raw/users.csv", Body=(
        b"id;name;year;month\n1;ada;2024;1\n2;bob;2024;2\n3;cy;2025;1\n"))
    df = files.from_s3(None, cfg(files.FromS3, bucket="lake", path="raw/users.csv", format="csv",
                             delimiter=";", inferSchema=True, credentialPath=bucket.path),
                   bucket.ctx("extract.fromS3"))
    assert rows(df) == [(1, "ada", 2024, 1), (2, "bob", 2024, 2), (3, "cy", 2025, 1)]
    r = files.to_s3(df, cfg(files.ToS3, bucket="lake", path="/processed/users", format="parquet",
                        mode="overwrite", compression="snappy", partitionBy=["year", "month"],
                        credentialPath=bucket.path), bucket.ctx("load.toS3"))
    assert r.location == "s3a://lake/processed/users"
    keys = bucket.keys("lake", "processed/users/")
    parts = sorted({k.split("/part-")[0] for k in keys if "/part-" in k})
    assert parts == ["processed/users/year=2024/month=1", "processed/users/year=2024/month=2",
                     "processed/users/year=2025/month=1"]
    assert all(k.endswith(".snappy.parquet") for k in keys if "/part-" in k)
    back = files.from_s3(None, cfg(files.FromS3, bucket="lake", path="processed/users",
                               credentialPath=bucket.path), bucket.ctx())
    assert rows(back.select("id", "name", "year", "month")) == rows(df)


def test_delta_and_avro_on_s3a(bucket, spark):
    df = spark.createDataFrame([(1, "a"), (2, "b")], "k int, v string")
    c = bucket.ctx("load.toDeltaLake")
    r = delta.to_delta_lake(df, cfg(delta.ToDeltaLake, path="s3a://lake/delta/t", mode="overwrite",
                                credentialPath=bucket.path), c)
    assert r.rows == 2 and any(k.startswith("delta/t/_delta_log/00000000000000000000.json")
                               for k in bucket.keys("lake"))
    delta.to_delta_lake(spark.createDataFrame([(3, "c")], "k int, v string"),
                    cfg(delta.ToDeltaLake, path="s3a://lake/delta/t", mode="append",
                        credentialPath=bucket.path), c)
    back = delta.from_delta_lake(None, cfg(delta.FromDeltaLake, path="s3a://lake/delta/t",
                                       credentialPath=bucket.path), c)
    assert rows(back) == [(1, "a"), (2, "b"), (3, "c")]
    v0 = delta.from_delta_lake(None, cfg(delta.FromDeltaLake, path="s3a://lake/delta/t", version=0,
                                     credentialPath=bucket.path), c)
    assert rows(v0) == [(1, "a"), (2, "b")]
    files.to_avro(df, cfg(files.ToAvro, path="s3a://lake/avro/t", mode="overwrite",
                      compression="snappy", credentialPath=bucket.path), c)
    avro = files.from_avro(None, cfg(files.FromAvro, path="s3a://lake/avro/t",
                                 credentialPath=bucket.path), c)
    assert rows(avro) == [(1, "a"), (2, "b")]


def test_missing_bucket_is_named(bucket, spark):
    with pytest.raises(Exception, match="no-such-bucket"):
        files.from_s3(None, cfg(files.FromS3, bucket="no-such-bucket", path="x.parquet",
                            credentialPath=bucket.path), bucket.ctx()).collect()
