"""Pipeline files in, one checked `PipelineConfig` out: a reader per format (readers/), the
pydantic models, parameter and date substitution, static checks. Knows nothing of Spark or
Dagster; method models come from a catalog (the step registry).

No re-exports here: a module of this package importing its own package would be a circle."""
