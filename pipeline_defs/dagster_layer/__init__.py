"""The Dagster layer: a checked pipeline (config/) becomes graph-backed assets with one op per
step (ops.py and the modules it calls), asset checks, a job, schedules, sensors, automation
and partitions (orchestration.py), the resources (resources/), the run summary (runs.py) and
the metrics export (metrics.py). It runs steps/ through the registry, never a method by name.
Named so that it does not shadow the `dagster` library."""
