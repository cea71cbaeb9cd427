"""The bench pipeline's query in DuckDB (bench/run_bench.py's third contender): same CSV files,
same schema, filter, derive, join, aggregate; the result as Parquet (DuckDB writes no Delta)."""
import sys

import duckdb

LINEITEM = {"l_orderkey": "BIGINT", "l_partkey": "BIGINT", "l_suppkey": "BIGINT",
            "l_linenumber": "INT", "l_quantity": "DOUBLE", "l_extendedprice": "DOUBLE",
            "l_discount": "DOUBLE", "l_tax": "DOUBLE", "l_returnflag": "VARCHAR",
            "l_linestatus": "VARCHAR", "l_shipdate": "DATE", "l_commitdate": "DATE",
            "l_receiptdate": "DATE", "l_shipinstruct": "VARCHAR", "l_shipmode": "VARCHAR",
            "l_comment": "VARCHAR"}
ORDERS = {"o_orderkey": "BIGINT", "o_custkey": "BIGINT", "o_orderstatus": "VARCHAR",
          "o_totalprice": "DOUBLE", "o_orderdate": "DATE", "o_orderpriority": "VARCHAR",
          "o_clerk": "VARCHAR", "o_shippriority": "INT", "o_comment": "VARCHAR"}


def main(data_dir: str, out: str, fmt: str = "csv") -> None:
    con = duckdb.connect()
    con.execute("SET threads = 2")
    li = f"read_csv('{data_dir}/lineitem.csv', header = true, columns = {LINEITEM})"
    od = f"read_csv('{data_dir}/orders.csv', header = true, columns = {ORDERS})"
    if fmt == "parquet":
        li, od = f"'{data_dir}/lineitem.parquet'", f"'{data_dir}/orders.parquet'"
    con.execute(f"""
        COPY (
          SELECT l_returnflag, l_linestatus, o_orderpriority,
                 sum(l_quantity) AS sum_qty,
                 sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
                 sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
                 avg(l_extendedprice) AS avg_price, count(*) AS count_order
          FROM {li} JOIN {od} ON l_orderkey = o_orderkey
          WHERE l_shipdate <= DATE '1998-09-02'
          GROUP BY ALL
        ) TO '{out}.parquet' (FORMAT parquet)""")


if __name__ == "__main__":
    main(*sys.argv[1:4])
