"""The one injectable wall clock: manual for tests, scaled for simulations shared between
processes, and settings that build it."""

from __future__ import annotations

import time

import pytest

from cargowatch.settings import Settings
from core.clock import MIN_REAL_SLEEP_S, ManualClock, ScaledClock, SystemClock

T = 1_795_334_400_000


async def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(T)
    await clock.sleep(3600)
    assert clock.now_ms() == T
    clock.advance(1.5)
    assert clock.now_ms() == T + 1500
    clock.set(T)
    assert clock.now_ms() == T


def test_two_scaled_clocks_with_the_same_anchor_agree() -> None:
    # how `cargowatch serve` and the simulator share accelerated time
    anchor = time.time_ns() // 1_000_000 - 2_000
    a = ScaledClock(300, start_ms=T, anchor_ms=anchor)
    b = ScaledClock(300, start_ms=T, anchor_ms=anchor)
    assert abs(a.now_ms() - b.now_ms()) <= 300 * 5  # read a few ms apart
    assert a.now_ms() - T == pytest.approx(600_000, abs=300 * 500)  # 2 s real = 10 min


def test_scaled_clock_before_its_anchor_reads_earlier() -> None:
    anchor = time.time_ns() // 1_000_000 + 10_000
    assert ScaledClock(60, start_ms=T, anchor_ms=anchor).now_ms() < T


def test_scaled_clock_refuses_a_non_positive_speed() -> None:
    with pytest.raises(ValueError, match="positive"):
        ScaledClock(0)


async def test_scaled_sleep_is_scaled_but_not_below_the_floor() -> None:
    clock = ScaledClock(1000, start_ms=T)
    t0 = time.monotonic()
    await clock.sleep(1.0)  # 1 ms of real time would be asked: the floor holds
    assert time.monotonic() - t0 >= MIN_REAL_SLEEP_S * 0.9
    t0 = time.monotonic()
    await clock.sleep(0.001)  # less than the floor asked for: not stretched to it
    assert time.monotonic() - t0 < MIN_REAL_SLEEP_S


def test_settings_build_the_clock_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(Settings().make_clock(), SystemClock)
    monkeypatch.setenv("CARGOWATCH_CLOCK_SPEED", "120")
    monkeypatch.setenv("CARGOWATCH_CLOCK_START_MS", str(T))
    monkeypatch.setenv("CARGOWATCH_CLOCK_ANCHOR_MS", str(time.time_ns() // 1_000_000))
    clock = Settings().make_clock()
    assert isinstance(clock, ScaledClock) and clock.speed == 120
    assert T <= clock.now_ms() < T + 120 * 5_000
