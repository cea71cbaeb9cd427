#!/bin/sh
# Seeds the dev Vault (OpenBao, whose CLI is bao) with the secret paths the original
# examples name (KV v2 at secret/).
set -eu
pg() { bao kv put "$1" host=postgres port=5432 database=pipelines username=pipeline \
         password="$POSTGRES_PASSWORD" >/dev/null; }
s3() { bao kv put "$1" accessKeyId="$MINIO_ROOT_USER" secretAccessKey="$MINIO_ROOT_PASSWORD" \
         region=us-east-1 endpoint=http://minio:9000 >/dev/null; }
pg secret/postgres
pg secret/postgres/production
pg secret/postgres/analytics
s3 secret/s3
s3 secret/s3/production
bao kv put secret/mysql host=mysql port=3306 database=pipelines username=pipeline \
  password="$MYSQL_PASSWORD" >/dev/null
bao kv put secret/kafka bootstrap.servers=kafka:9092 >/dev/null
echo "vault-seed: secrets written"
