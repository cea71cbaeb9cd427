"""The console logger of every pipeline run: Dagster's colored console, but a failure is one
line (the error's own message), not the error's Python stack. The stack stays where Dagster
keeps it, in the run's event log (the run page in the UI), which no console logger touches."""
from __future__ import annotations

import logging

import dagster as dg
from dagster._utils.log import create_console_logger

STACK = "\n\nStack Trace:"


class OneLineErrors(logging.Filter):
    """Cuts an event's error down to its first line: `failed.\\n\\nmodule.Class: message\\n
    \\nStack Trace: ...` becomes `failed: message`."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if STACK in msg:
            head, _, error = msg.partition(STACK)[0].partition("\n\n")
            error = error.strip().splitlines()[0] if error.strip() else ""
            kind, sep, text = error.partition(": ")
            if sep and "." in kind and " " not in kind:  # drop "dagster._core...Failure"
                error = text
            record.msg, record.args = (f"{head.rstrip('.')}: {error}" if error else head), ()
        return True


@dg.logger(
    {"log_level": dg.Field(str, is_required=False, default_value="INFO",
                           description="The logger's threshold."),
     "name": dg.Field(str, is_required=False, default_value="dagster",
                      description="The name of the logger.")},
    description="Dagster's colored console logger, with errors on one line (their stack "
                "traces are in the run's event log).")
def console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    log = create_console_logger(name=init_context.logger_config["name"],
                                level=init_context.logger_config["log_level"])
    for handler in log.handlers:
        handler.addFilter(OneLineErrors())
    return log
