"""The run's one SparkSession: its settings (jars, Delta, the master from SPARK_MASTER),
starting it (in the background while Dagster loads) and the JVM class archive that makes
starting it fast. Knows nothing of Dagster; the Spark resource of the Dagster layer uses it."""
