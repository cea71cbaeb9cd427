"""The bench pipeline's work written by hand in PySpark: the baseline (bench/run_bench.py)."""
import sys

from pyspark.sql import functions as F

from pipeline_defs.spark.session import session, settings_from_env

LINEITEM = ("l_orderkey BIGINT, l_partkey BIGINT, l_suppkey BIGINT, l_linenumber INT, "
            "l_quantity DOUBLE, l_extendedprice DOUBLE, l_discount DOUBLE, l_tax DOUBLE, "
            "l_returnflag STRING, l_linestatus STRING, l_shipdate DATE, l_commitdate DATE, "
            "l_receiptdate DATE, l_shipinstruct STRING, l_shipmode STRING, l_comment STRING")
ORDERS = ("o_orderkey BIGINT, o_custkey BIGINT, o_orderstatus STRING, o_totalprice DOUBLE, "
          "o_orderdate DATE, o_orderpriority STRING, o_clerk STRING, o_shippriority INT, "
          "o_comment STRING")


def _read(spark, data_dir: str, table: str, schema: str, fmt: str):
    if fmt == "parquet":
        return spark.read.parquet(f"{data_dir}/{table}.parquet")
    return spark.read.format("csv").option("header", "true").schema(schema).load(
        f"{data_dir}/{table}.csv")


def main(data_dir: str, fmt: str, out: str) -> None:
    # Same session settings as the product (jars, Delta): only the orchestration differs
    # (run_bench.py turns native execution off for this script: plain PySpark has none).
    spark = session(settings_from_env())
    items = (_read(spark, data_dir, "lineitem", LINEITEM, fmt)
             .filter("l_shipdate <= DATE'1998-09-02'")
             .withColumn("disc_price", F.expr("l_extendedprice * (1 - l_discount)"))
             .withColumn("charge", F.expr("l_extendedprice * (1 - l_discount) * (1 + l_tax)")))
    orders = _read(spark, data_dir, "orders", ORDERS, fmt)
    summary = (items.join(orders, items.l_orderkey == orders.o_orderkey)
               .groupBy("l_returnflag", "l_linestatus", "o_orderpriority")
               .agg(F.sum("l_quantity").alias("sum_qty"),
                    F.sum("disc_price").alias("sum_disc_price"),
                    F.sum("charge").alias("sum_charge"),
                    F.avg("l_extendedprice").alias("avg_price"),
                    F.count(F.lit(1)).alias("count_order")))
    summary.write.format("delta").mode("overwrite").save(out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
