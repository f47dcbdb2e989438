"""A tiny Prometheus text-format registry (counters, gauges, summaries of latency).

Thread-safe enough for our use: increments happen under the GIL from the pipeline thread and
the event loop; rendering takes a snapshot.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable

Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters, gauges and histograms by name and labels; rendered as Prometheus text."""

    BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hist: dict[str, dict[Labels, list[float]]] = defaultdict(dict)
        self._gauge_fns: dict[str, Callable[[], Iterable[tuple[Labels, float]]]] = {}

    def describe(self, name: str, kind: str, help_text: str) -> None:
        self._help[name] = (kind, help_text)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[name][key] = float(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            h = self._hist[name].get(key)
            if h is None:
                h = self._hist[name][key] = [0.0] * (len(self.BUCKETS) + 2)  # buckets, sum, count
            for i, b in enumerate(self.BUCKETS):
                if value <= b:
                    h[i] += 1
            h[-2] += value
            h[-1] += 1

    def gauge_fn(self, name: str, fn: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        """A gauge computed at scrape time."""
        self._gauge_fns[name] = fn

    def value(self, name: str, **labels: str) -> float:
        return self._values.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            values = {k: dict(v) for k, v in self._values.items()}
            hists = {k: {lk: list(h) for lk, h in v.items()} for k, v in self._hist.items()}
        for name, fn in self._gauge_fns.items():
            try:
                values[name] = dict(fn())
            except Exception:  # a broken gauge must not break the scrape
                continue
        for name in sorted(values):
            kind, text = self._help.get(
                name, ("counter" if name.endswith("_total") else "gauge", name)
            )
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for labels, v in sorted(values[name].items()):
                lines.append(f"{name}{_fmt_labels(labels)} {v:g}")
        for name in sorted(hists):
            _, text = self._help.get(name, ("histogram", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
            for labels, h in sorted(hists[name].items()):
                for i, b in enumerate(self.BUCKETS):
                    lab = _fmt_labels((*labels, ("le", f"{b:g}")))
                    lines.append(f"{name}_bucket{lab} {h[i]:g}")
                lines.append(f"{name}_bucket{_fmt_labels((*labels, ('le', '+Inf')))} {h[-1]:g}")
                lines.append(f"{name}_sum{_fmt_labels(labels)} {h[-2]:g}")
                lines.append(f"{name}_count{_fmt_labels(labels)} {h[-1]:g}")
        return "\n".join(lines) + "\n"
