"""JSON data pipelines as Dagster jobs and assets on PySpark and Delta Lake."""
