"""What every room uses and nothing else: the project's errors, the secret scrubber, retries
with backoff. Imports nothing of pipeline_defs, nothing of Spark or Dagster."""
