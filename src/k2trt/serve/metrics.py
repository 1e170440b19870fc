"""Prometheus metrics of one gateway, in its own registry (two apps never share series)."""

from __future__ import annotations

import glob
import os
import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set: several worker processes share the series
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds. First tokens wait for prefill (and the queue); later ones are one decode step.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """Every series the gateway exports (summed over the worker processes when
    $PROMETHEUS_MULTIPROC_DIR is set: gauges over the live workers only).

    >>> m = Metrics(); m.request("/health", 200)
    >>> b'k2trt_requests_total{route="/health",status="200"} 1.0' in m.render()
    True
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._requests = Counter(
            "k2trt_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self._errors = Counter(
            "k2trt_errors", "Failed requests by route and error type", ["route", "type"], registry=r
        )
        self.prompt_tokens = Counter("k2trt_prompt_tokens", "Prompt tokens", registry=r)
        self.completion_tokens = Counter("k2trt_completion_tokens", "Generated tokens", registry=r)
        self.ttft = Histogram(
            "k2trt_time_to_first_token_seconds",
            "Request arrival to the first streamed chunk",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "k2trt_inter_token_latency_seconds",
            "Time between consecutive chunks of one answer",
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "k2trt_request_duration_seconds",
            "Chat request arrival to the end of the answer",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._multiproc_dir = os.environ.get(MULTIPROC_ENV)
        self.queue_depth = Gauge(
            "k2trt_queue_depth",
            "Requests waiting for a slot",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "k2trt_in_flight", "Requests holding a slot", registry=r, multiprocess_mode="livesum"
        )
        self._children: dict[tuple[str, int], Counter] = {}

    def request(self, route: str, status: int) -> None:
        """Count one finished request (status 499: the client went away first)."""
        child = self._children.get((route, status))
        if child is None:
            child = self._children[route, status] = self._requests.labels(route, str(status))
        child.inc()

    def error(self, route: str, kind: str) -> None:
        """Count one failure by type (an API error type, or client_disconnect)."""
        self._errors.labels(route, kind).inc()

    def tokens(self, prompt: int, completion: int) -> None:
        self.prompt_tokens.inc(prompt)
        self.completion_tokens.inc(completion)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        if self._multiproc_dir is None:
            return generate_latest(self.registry)
        _forget_dead_workers(self._multiproc_dir)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, self._multiproc_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


def _forget_dead_workers(path: str) -> None:
    """Drop the live gauges of worker processes that are gone (a replaced worker's
    in-flight count must not linger); their counters stay, as counters must."""
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_GAUGE_FILE.search(name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass
