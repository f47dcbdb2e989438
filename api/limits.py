"""Limits the API applies before it does any work for a request.

``ApiLimits`` holds the operator's values (settings ``max_body_bytes`` and
``key_failures_per_min``); ``FailureLimiter`` counts unknown API keys per client address
in a sliding minute, so a key cannot be guessed at the speed of the network;
``json_text_problem`` finds text in a JSON body that no store can keep (a NUL character,
which PostgreSQL refuses in text and JSON, or a lone UTF-16 surrogate, which is not
Unicode), so that it is a 400 before any route runs rather than an error of the store.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MIB = 1_048_576


@dataclass(frozen=True, slots=True)
class ApiLimits:
    """What one app enforces; the defaults are the settings' defaults."""

    max_body_bytes: int = MIB
    key_failures_per_min: int = 20
    #: how many client addresses the failure counter remembers (oldest forgotten first)
    tracked_clients: int = 100_000

    @classmethod
    def of(cls, settings: Any) -> ApiLimits:
        """From ``cargowatch.settings.Settings`` (its ``max_body_bytes`` and
        ``key_failures_per_min``)."""
        return cls(int(settings.max_body_bytes), int(settings.key_failures_per_min))


class FailureLimiter:
    """Failed key attempts per client address over the last ``window_s`` seconds.

    Memory is bounded: at most ``max_clients`` addresses with at most ``limit`` timestamps
    each; a flood of new addresses forgets the least recently failing ones first."""

    def __init__(
        self,
        limit: int,
        *,
        window_s: float = 60.0,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window_s
        self._max = max_clients
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    def _recent(self, client: str, now: float) -> collections.deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def retry_after_s(self, client: str) -> int:
        """0 when ``client`` may try a key now, else the seconds until it may."""
        with self._lock:
            now = self._clock()
            times = self._recent(client, now)
            if times is None or len(times) < self._limit:
                return 0
            return max(1, int(times[0] + self._window - now + 0.999))

    def failed(self, client: str) -> None:
        """Count one unknown key from ``client``."""
        with self._lock:
            now = self._clock()
            times = self._recent(client, now)
            if times is None:
                times = collections.deque(maxlen=self._limit)
                self._failures[client] = times
                while len(self._failures) > self._max:
                    self._failures.popitem(last=False)
            else:
                self._failures.move_to_end(client)
            times.append(now)


# A JSON escape of NUL or of a surrogate, preceded by an even number of backslashes (an odd
# number would make the backslash itself the escaped character). Only a prefilter: the
# decoded document decides (a surrogate may be half of a valid pair).
_SUSPECT_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


def json_text_problem(body: bytes) -> str | None:
    """Why ``body`` (a JSON request body) holds text that cannot be stored, or None.

    None as well for a body that is not JSON at all: the route's own parser answers that.
    Raw control bytes inside JSON strings are invalid JSON, so only escapes are looked for;
    a body without a suspect escape costs one regular-expression scan."""
    if not _SUSPECT_ESCAPE.search(body):
        return None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return _text_problem(doc)


def _text_problem(doc: object) -> str | None:
    # Iterative: a deeply nested body must not exhaust the stack here.
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "the JSON body holds a NUL character (\\u0000), which cannot be stored"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "the JSON body holds a lone UTF-16 surrogate, which is not Unicode text"
    return None
