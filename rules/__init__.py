"""The rule engine (CONTRACT §3-§4): trip plans and device messages in, engine events out.

Pure and deterministic: no I/O, no clock, no asyncio, so it runs identically live, after a
restart and in replay/backtest. Method and choices: docs/rules.md.
"""

from rules.backfill import HISTORY_LOOKBACK_MS, History
from rules.batch import FixCols, LockCols
from rules.engine import Engine, EngineResult, PositionBatch
from rules.errors import RulesError, RuleValueError, TripPlanError
from rules.events import (
    SEVERITY,
    AlarmSignal,
    AlarmType,
    AlarmWithdrawn,
    EngineEvent,
    EpisodeEnded,
    GeofenceChange,
    GeofenceTransition,
    Milestone,
    MilestoneKind,
    PositionUpdate,
    Severity,
    TripStatus,
    TripStatusChanged,
)
from rules.plan import FencePlan, StopPlan, TripPlan, parse_time_ms, parse_trip
from rules.replay import replay
from rules.rewind import Journal
from rules.thresholds import DEFAULT_RULES, RULE_NAMES, RULE_RANGES, validate_rules

__all__ = [
    "DEFAULT_RULES",
    "HISTORY_LOOKBACK_MS",
    "RULE_NAMES",
    "RULE_RANGES",
    "SEVERITY",
    "AlarmSignal",
    "AlarmType",
    "AlarmWithdrawn",
    "Engine",
    "EngineEvent",
    "EngineResult",
    "EpisodeEnded",
    "FencePlan",
    "FixCols",
    "GeofenceChange",
    "GeofenceTransition",
    "History",
    "Journal",
    "LockCols",
    "Milestone",
    "MilestoneKind",
    "PositionBatch",
    "PositionUpdate",
    "RuleValueError",
    "RulesError",
    "Severity",
    "StopPlan",
    "TripPlan",
    "TripPlanError",
    "TripStatus",
    "TripStatusChanged",
    "parse_time_ms",
    "parse_trip",
    "replay",
    "validate_rules",
]
