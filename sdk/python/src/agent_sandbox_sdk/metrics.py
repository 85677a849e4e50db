"""Client-side latency histograms, with upstream's names, labels and buckets (milliseconds):

* ``sandbox_client_discovery_latency_ms{mode, status}``: starting a connection (``mode``:
  ``port_forward`` for the router tunnel, ``sandboxd_pod_tunnel``, ``gateway``);
* ``sandbox_client_suspend_latency_ms{status}`` and ``sandbox_client_resume_latency_ms{status}``:
  ``sandbox.suspend()`` and ``sandbox.resume()`` with ``wait``;
* ``sandbox_client_restore_latency_ms{status}``: kept for upstream's name (snapshots are not
  supported here, so it stays empty).

They are kept here, and with ``prometheus_client`` installed (the ``metrics`` extra) also
collected by its default registry from the first observation on, so an existing Prometheus
endpoint of the program exports them. :func:`agent_sandbox_sdk.get_metrics` renders them."""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

LATENCY_BUCKETS_MS = (100, 250, 500, 750, 1000, 1250, 1500, 2000, 2500, 5000, 10000, 30000,
                      60000, 120000, 240000)


def _prometheus() -> Any:
    try:
        return importlib.import_module("prometheus_client")
    except ImportError:
        return None


class Histogram:
    """A labelled histogram: ``labels(**values).observe(ms)``."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float] = LATENCY_BUCKETS_MS) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(float(b) for b in buckets)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., count, sum

    def labels(self, **values: str) -> _Child:
        key = tuple(str(values[n]) for n in self.labelnames)
        return _Child(self, key, values)

    def _observe(self, key: tuple[str, ...], values: dict[str, str], ms: float) -> None:
        if not _register_tried:
            ensure_registered()
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, b in enumerate(self.buckets):
                if ms <= b:
                    series[i] += 1
            series[-2] += 1
            series[-1] += ms

    def snapshot(self) -> dict[tuple[str, ...], list[float]]:
        """Label values to cumulative bucket counts, then the count and the sum."""
        with self._lock:
            return {k: list(v) for k, v in self._series.items()}

    def render(self) -> str:
        """The Prometheus text exposition of this histogram."""
        lines = [f"# HELP {self.name} {self.documentation}", f"# TYPE {self.name} histogram"]
        for key, values in sorted(self.snapshot().items()):
            base = ",".join(f'{n}="{v}"' for n, v in zip(self.labelnames, key))
            sep = "," if base else ""
            for b, count in zip(self.buckets, values):
                lines.append(f'{self.name}_bucket{{{base}{sep}le="{b}"}} {count}')
            lines.append(f'{self.name}_bucket{{{base}{sep}le="+Inf"}} {values[-2]}')
            lines.append(f"{self.name}_count{{{base}}} {values[-2]}")
            lines.append(f"{self.name}_sum{{{base}}} {values[-1]}")
        return "\n".join(lines) + "\n"


class _Child:
    def __init__(self, parent: Histogram, key: tuple[str, ...], values: dict[str, str]) -> None:
        self._parent = parent
        self._key = key
        self._values = values

    def observe(self, ms: float) -> None:
        self._parent._observe(self._key, self._values, float(ms))


@contextmanager
def timed(histogram: Histogram, **labels: str) -> Iterator[None]:
    """Observes the block's duration, with ``status`` ``success`` or ``failure``."""
    start = time.monotonic()
    status = "failure"
    try:
        yield
        status = "success"
    finally:
        histogram.labels(**labels, status=status).observe((time.monotonic() - start) * 1000)


sandbox_client_discovery_latency_ms = Histogram(
    "sandbox_client_discovery_latency_ms",
    "Latency of establishing connection to the sandbox in milliseconds", ["mode", "status"])
sandbox_client_suspend_latency_ms = Histogram(
    "sandbox_client_suspend_latency_ms", "Latency of suspending the sandbox in milliseconds",
    ["status"])
sandbox_client_resume_latency_ms = Histogram(
    "sandbox_client_resume_latency_ms", "Latency of resuming the sandbox in milliseconds",
    ["status"])
sandbox_client_restore_latency_ms = Histogram(
    "sandbox_client_restore_latency_ms",
    "Latency of restoring the sandbox from a snapshot in milliseconds", ["status"])

ALL = (sandbox_client_discovery_latency_ms, sandbox_client_suspend_latency_ms,
       sandbox_client_resume_latency_ms, sandbox_client_restore_latency_ms)


class _Collector:
    """Feeds the histograms to ``prometheus_client``'s default registry. It describes nothing
    up front, so that registering it never clashes with another library registering the same
    names (upstream's SDK, during a port)."""

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        core = importlib.import_module("prometheus_client.core")
        for h in ALL:
            family = core.HistogramMetricFamily(h.name, h.documentation,
                                                labels=list(h.labelnames))
            for key, values in sorted(h.snapshot().items()):
                buckets = [(str(b), values[i]) for i, b in enumerate(h.buckets)]
                buckets.append(("+Inf", values[-2]))
                family.add_metric(list(key), buckets, values[-1])
            yield family


REGISTERED = False
_register_lock = threading.Lock()
_register_tried = False


def ensure_registered() -> bool:
    """Registers the histograms with ``prometheus_client``'s default registry, once, when it
    is installed (at the first observation or ``get_metrics()``, so that importing the SDK does
    not import it)."""
    global REGISTERED, _register_tried
    with _register_lock:
        if not _register_tried:
            _register_tried = True
            prom = _prometheus()
            if prom is not None:
                try:
                    prom.REGISTRY.register(_Collector())
                    REGISTERED = True
                except ValueError:
                    REGISTERED = False
        return REGISTERED
