"""``get_metrics()`` and ``print_metrics()``, as upstream's: the client's metrics in the
Prometheus text format."""

from __future__ import annotations

from . import metrics


def get_metrics() -> str:
    """The Prometheus text exposition: with ``prometheus_client`` installed, its whole default
    registry (the client's histograms included), as upstream; else the client's histograms."""
    prom = metrics._prometheus()
    if prom is not None and metrics.ensure_registered():
        return str(prom.generate_latest(prom.REGISTRY).decode("utf-8"))
    return "".join(h.render() for h in metrics.ALL)


def print_metrics() -> None:
    """Prints :func:`get_metrics` to stdout."""
    print(get_metrics())
