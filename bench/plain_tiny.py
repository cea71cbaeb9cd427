"""bench/overhead_bench.py's baseline: the tiny pipeline's work in plain PySpark."""
import sys

from pipeline_defs.spark.session import session, settings_from_env

# Same session settings as the product (jars, Delta): only the orchestration differs.
spark = session(settings_from_env())
spark.read.parquet(sys.argv[1]).write.format("delta").mode("overwrite").save(sys.argv[2])
