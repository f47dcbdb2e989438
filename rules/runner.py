"""Run a set of messages through the rules: geometry once, then round by round."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from rules.batch import FixCols, LockCols, rounds
from rules.context import Ctx, Outcome
from rules.fixrules import apply_fix_round
from rules.lockrules import apply_lock

__all__ = ["run"]


def run(
    ctx: Ctx,
    fixes: FixCols,
    ftrip: npt.NDArray[np.int64],
    locks: LockCols,
    ltrip: npt.NDArray[np.int64],
) -> Outcome:
    """Apply ``fixes`` and ``locks`` (trip slot per message, -1 for none) in per-trip event
    time order. Route and fence geometry of every fix is computed in one call up front."""
    out = Outcome.new(len(fixes), len(locks))
    if len(fixes) + len(locks) == 0:
        return out
    ok = (
        np.isfinite(fixes.lon) & np.isfinite(fixes.lat) & ~((fixes.lon == 0.0) & (fixes.lat == 0.0))
    )
    geo = ctx.geometry.evaluate(ctx.trips, ftrip, fixes.lon, fixes.lat, ok)
    # Devices on no trip get a group of their own, after every trip slot.
    cap = ctx.trips.capacity
    fgroup = np.where(ftrip >= 0, ftrip, cap + fixes.dev)
    lgroup = np.where(ltrip >= 0, ltrip, cap + locks.dev)
    for rnd in rounds(
        fgroup, fixes.ts, fixes.dev, fixes.seq, lgroup, locks.ts, locks.dev, locks.seq
    ):
        if rnd.fixes.size:
            apply_fix_round(ctx, fixes, ftrip, geo, rnd.fixes, out)
        for j in rnd.locks.tolist():
            apply_lock(ctx, locks, j, int(ltrip[j]), out)
    return out
