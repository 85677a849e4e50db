"""OpenTelemetry spans, with upstream's names (``<trace_service_name>.<operation>``) and
attributes, when ``SandboxTracerConfig(enable_tracing=True)`` and the ``tracing`` extra is
installed. Without either, every call here does nothing.

The first client that enables tracing installs a global ``TracerProvider`` (resource
``service.name``) exporting over OTLP (the exporter's usual ``OTEL_EXPORTER_OTLP_*`` settings),
unless the program has installed one already, which is then used as it is."""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

from .models import SandboxTracerConfig

log = logging.getLogger("agent_sandbox_sdk")

TRACE_CONTEXT_ANNOTATION = "opentelemetry.io/trace-context"

_provider_lock = threading.Lock()
_provider_ready = False


class _NoSpan:
    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: Any) -> None:
        pass


NO_SPAN: Any = _NoSpan()


def _otel() -> Optional[Any]:
    try:
        return importlib.import_module("opentelemetry.trace")
    except ImportError:
        return None


def _install_provider(service_name: str) -> None:
    """A global TracerProvider exporting over OTLP, once per process, unless one is set."""
    global _provider_ready
    with _provider_lock:
        if _provider_ready:
            return
        _provider_ready = True
        trace = importlib.import_module("opentelemetry.trace")
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return  # the program configured tracing itself
        try:
            sdk_trace = importlib.import_module("opentelemetry.sdk.trace")
            resources = importlib.import_module("opentelemetry.sdk.resources")
            export = importlib.import_module("opentelemetry.sdk.trace.export")
        except ImportError:
            log.error("tracing is enabled but opentelemetry-sdk is not installed: spans are not "
                      "recorded. Install the tracing extra: pip install "
                      "'agent-sandbox-sdk[tracing]'")
            return
        provider = sdk_trace.TracerProvider(
            resource=resources.Resource(attributes={"service.name": service_name}))
        exporter = None
        for mod in ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
                    "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
            try:
                exporter = importlib.import_module(mod).OTLPSpanExporter()
                break
            except ImportError:
                continue
        if exporter is None:
            log.error("tracing is enabled but no OTLP exporter is installed: spans are recorded "
                      "and not exported. Install the tracing extra: pip install "
                      "'agent-sandbox-sdk[tracing]'")
        else:
            provider.add_span_processor(export.BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        atexit.register(provider.shutdown)


class Tracing:
    """The spans of one client (and of its sandboxes)."""

    def __init__(self, config: Optional[SandboxTracerConfig]) -> None:
        self.config = config or SandboxTracerConfig()
        self.service_name = self.config.trace_service_name
        self._tracer: Any = None
        self._trace: Any = None
        if not self.config.enable_tracing:
            return
        trace = _otel()
        if trace is None:
            log.error("tracing is enabled but opentelemetry is not installed; install the "
                      "tracing extra: pip install 'agent-sandbox-sdk[tracing]'")
            return
        _install_provider(self.service_name)
        self._trace = trace
        self._tracer = trace.get_tracer(self.service_name.replace("-", "_"))

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextmanager
    def span(self, operation: str, attributes: Optional[Mapping[str, Any]] = None
             ) -> Iterator[Any]:
        """A span ``<service>.<operation>`` around the block, the current one inside it."""
        if self._tracer is None:
            yield NO_SPAN
            return
        with self._tracer.start_as_current_span(f"{self.service_name}.{operation}") as s:
            for k, v in (attributes or {}).items():
                if v is not None:
                    s.set_attribute(k, v)
            yield s

    def claim_annotations(self) -> dict[str, str]:
        """The current trace context (``traceparent``, ``tracestate``) for a claim's
        ``opentelemetry.io/trace-context`` annotation, as upstream writes it."""
        if self._tracer is None:
            return {}
        try:
            tc = importlib.import_module("opentelemetry.trace.propagation.tracecontext")
        except ImportError:
            return {}
        carrier: dict[str, str] = {}
        tc.TraceContextTextMapPropagator().inject(carrier)
        return {TRACE_CONTEXT_ANNOTATION: json.dumps(carrier)} if carrier else {}


def executable(command: str) -> str:
    """The program of a shell command (``A=1 /usr/bin/python3 x`` gives ``python3``), for the
    ``sandbox.command.executable`` attribute."""
    for word in command.split():
        if "=" in word:
            continue
        return word.rsplit("/", 1)[-1]
    return ""
