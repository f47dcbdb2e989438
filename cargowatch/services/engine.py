"""The rule engine behind its lock: the pipeline's worker thread and the API's threads share it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rules import Engine


class EngineGate:
    """One ``Engine`` and the lock every caller holds while using it."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine or Engine()
        self.lock = threading.RLock()

    @contextmanager
    def held(self) -> Iterator[Engine]:
        with self.lock:
            yield self.engine
