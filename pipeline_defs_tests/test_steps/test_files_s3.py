"""fromS3 / toS3, and Delta and Avro on s3a://, against moto's S3 server on loopback with
credentials and endpoint from OpenBao (Vault's API)."""
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


@pytest.fixture
def iam_s3(tmp_path):
    """A second moto S3 server that checks credentials as AWS does (signature, user, policy):
    two users, each allowed one bucket of its own (bucket names unique per test, as s3a
    caches a file system per bucket)."""
    import json
    import os
    import secrets as pysecrets
    import sys
    from pathlib import Path

    import boto3

    from pipeline_defs_tests.owned import Owned, start_on_port_zero
    owned = Owned("moto", tmp_path)
    # the first 10 requests (the set-up below) are let through; every later one is checked
    (port,) = start_on_port_zero("the IAM-checking S3 server", owned, lambda: owned.popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", "0"],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "10"}))
    endpoint = f"http://127.0.0.1:{port}"
    try:
        admin = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                     aws_secret_access_key="setup")
        iam, s3 = boto3.client("iam", **admin), boto3.client("s3", **admin)
        suffix = pysecrets.token_hex(4)
        users = {}
        for user in ("alice", "bob"):
            bucket = f"{user}-{suffix}"
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            iam.put_user_policy(UserName=user, PolicyName="own-bucket", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Action": "s3:*", "Resource": [
                        f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]},
                    {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}))
            users[user] = {"bucket": bucket, "accessKeyId": key["AccessKeyId"],
                           "secretAccessKey": key["SecretAccessKey"], "region": "us-east-1",
                           "endpoint": endpoint}
        # a role alice may assume, allowed her bucket: temporary credentials with a token
        iam.create_role(RoleName="writer", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "sts:AssumeRole",
                "Principal": {"AWS": "arn:aws:iam::123456789012:user/alice"}}]}))
        iam.put_role_policy(RoleName="writer", PolicyName="alice-bucket", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",
             "Resource": [f"arn:aws:s3:::alice-{suffix}", f"arn:aws:s3:::alice-{suffix}/*"]}]}))
        for u in users.values():
            s3.create_bucket(Bucket=u["bucket"])

        def client(user):
            u = users[user]
            return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                aws_access_key_id=u["accessKeyId"],
                                aws_secret_access_key=u["secretAccessKey"])
        yield users, client
    finally:
        owned.stop()


def _secret(u: dict, **extra) -> dict:
    return {k: v for k, v in {**u, **extra}.items() if k != "bucket"}


def test_two_buckets_with_different_credentials_in_one_spark_job(iam_s3, vault, vault_resource,
                                                                 ctx, spark):
    users, client = iam_s3
    alice, bob = users["alice"], users["bob"]
    client("alice").put_object(Bucket=alice["bucket"], Key="in/users.csv",
                               Body=b"id,name\n1,ada\n2,bob\n")
    c = ctx(read_secret=vault_resource.read_secret, audit=vault_resource.audit)
    pa = vault.put("secret", "s3/alice", _secret(alice))
    pb = vault.put("secret", "s3/bob", _secret(bob))
    df = files.from_s3(None, cfg(files.FromS3, bucket=alice["bucket"], path="in/users.csv",
                                 format="csv", credentialPath=pa), c)
    # one job reads alice's bucket and writes bob's: both credentials are live at once
    files.to_s3(df, cfg(files.ToS3, bucket=bob["bucket"], path="out", format="json",
                        mode="overwrite", credentialPath=pb), c)
    keys = [o["Key"] for o in client("bob").list_objects_v2(Bucket=bob["bucket"])["Contents"]]
    assert any(k.startswith("out/part-") for k in keys) and "out/_SUCCESS" in keys
    back = files.from_s3(None, cfg(files.FromS3, bucket=bob["bucket"], path="out",
                                   format="json", credentialPath=pb), c)
    assert rows(back.select("id", "name")) == [(1, "ada"), (2, "bob")]
    # the server does check: alice's credentials for bob's bucket are refused
    wrong = vault.put("secret", "s3/wrong", {**_secret(alice)})
    with pytest.raises(Exception, match=r"(?i)403|AccessDenied"):
        files.to_s3(df, cfg(files.ToS3, bucket=bob["bucket"], path="other", format="json",
                            credentialPath=wrong), c)


def test_a_session_token_reaches_s3(iam_s3, vault, vault_resource, ctx, spark):
    import boto3
    users, _ = iam_s3
    alice = users["alice"]
    sts = boto3.client("sts", endpoint_url=alice["endpoint"], region_name="us-east-1",
                       aws_access_key_id=alice["accessKeyId"],
                       aws_secret_access_key=alice["secretAccessKey"])
    temp = sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/writer",
                           RoleSessionName="etl")["Credentials"]
    assert temp["AccessKeyId"].startswith("ASIA")  # temporary: useless without the token
    c = ctx(read_secret=vault_resource.read_secret, audit=vault_resource.audit)
    session = {"accessKeyId": temp["AccessKeyId"], "secretAccessKey": temp["SecretAccessKey"],
               "sessionToken": temp["SessionToken"], "region": "us-east-1",
               "endpoint": alice["endpoint"]}
    df = spark.createDataFrame([(1, "a")], "id int, v string")
    files.to_s3(df, cfg(files.ToS3, bucket=alice["bucket"], path="t1", format="json",
                        credentialPath=vault.put("secret", "s3/session", session)), c)
    assert [r.id for r in files.from_s3(None, cfg(
        files.FromS3, bucket=alice["bucket"], path="t1", format="json",
        credentialPath=vault.put("secret", "s3/session", session)), c).collect()] == [1]
    # the same keys without their token are refused: the token is what made them work
    no_token = vault.put("secret", "s3/no-token", {k: v for k, v in session.items()
                                                   if k != "sessionToken"})
    with pytest.raises(Exception, match=r"(?i)403|InvalidAccessKeyId|AccessDenied"):
        files.to_s3(df, cfg(files.ToS3, bucket=alice["bucket"], path="t2", format="json",
                            credentialPath=no_token), c)


def test_the_endpoint_from_aws_endpoint_url(s3, vault, vault_resource, ctx, spark, monkeypatch):
    import secrets as pysecrets
    name = f"env-{pysecrets.token_hex(4)}"  # a bucket s3a has no file system cached for
    s3.client.create_bucket(Bucket=name)
    secret = {k: v for k, v in s3.secret().items() if k != "endpoint"}
    c = ctx(read_secret=vault_resource.read_secret, audit=vault_resource.audit)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)  # the S3-specific one wins
    df = spark.createDataFrame([(1, "a")], "id int, v string")
    files.to_s3(df, cfg(files.ToS3, bucket=name, path="t", format="json",
                        credentialPath=vault.put("secret", "s3/noendpoint", secret)), c)
    assert any(k.startswith("t/part-") for k in s3.keys(name))
