"""Validate methods: rules on the current DataFrame, with an action when rows break them.

All rules of consecutive validate steps are counted in one Spark job (`engine`); `onFailure`
then decides: fail the run, warn, drop the violating rows, or quarantine them (written to a
Delta table with the rules they broke) and go on with the good rows."""
from pipeline_defs.steps.validate import dataset, history, rows  # noqa: F401 - registrations
from pipeline_defs.steps.validate.engine import ValidationGroup, evaluate
from pipeline_defs.steps.validate.rules import RuleResult, ValidationFailed, Validator

__all__ = ["RuleResult", "ValidationFailed", "ValidationGroup", "Validator", "evaluate"]
