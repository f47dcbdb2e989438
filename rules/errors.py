"""Errors of the rules package.

CargowatchError
 └── RulesError              anything the rule engine refuses
      ├── TripPlanError      a trip document that is not a valid plan (the API answers 422)
      └── RuleValueError     an unknown threshold name or a value out of its range
"""

from core import errors as kinds


class RulesError(kinds.CargowatchError):
    """The rule engine refused its input."""


class TripPlanError(RulesError, kinds.InvalidInput):
    """A trip document is not a valid plan; ``str(error)`` says what and where."""


class RuleValueError(RulesError, kinds.InvalidInput):
    """A rule threshold is unknown or out of range (shipper rules, replay overrides)."""
