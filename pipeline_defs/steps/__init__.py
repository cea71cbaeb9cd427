"""Spark work: one function per method, `(df, cfg, ctx) -> DataFrame`, registered by `@step`."""
