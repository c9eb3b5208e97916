"""Prometheus metrics (GET /metrics): requests, queue, active sequences, tokens, latency histograms.

The engine gauges and the token counter have one sample per served model (label `model`); the request counter
and the latency histograms count every model together."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from server.engine import Engine
from server.jobs import Job, TokenEvent

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class EngineCollector:
    """Reads the engines' state at scrape time: one sample per served model, labelled with its name."""

    def __init__(self, get_engines: Callable[[], dict[str, Engine]]):
        self.get_engines = get_engines

    def collect(self):
        queue = GaugeMetricFamily("tinyllm_queue_length", "requests waiting for a KV-cache slot", labels=["model"])
        active = GaugeMetricFamily("tinyllm_active_sequences", "sequences being prefilled or decoded", labels=["model"])
        free = GaugeMetricFamily("tinyllm_kv_slots_free", "free KV-cache slots", labels=["model"])
        tokens = CounterMetricFamily("tinyllm_tokens_generated", "tokens generated since start", labels=["model"])
        for model, engine in self.get_engines().items():
            queue.add_metric([model], engine.queue_length)
            active.add_metric([model], engine.active_count)
            free.add_metric([model], engine.max_batch - len(engine.active))
            tokens.add_metric([model], engine.tokens_generated)
        yield from (queue, active, free, tokens)


class Metrics:
    def __init__(self, get_engine):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tinyllm_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.ttft = Histogram(
            "tinyllm_time_to_first_token_seconds",
            "from request to its first token",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            "tinyllm_inter_token_latency_seconds",
            "between consecutive tokens of a request",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(EngineCollector(get_engine))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def timed(self, job: Job) -> AsyncIterator[list]:
        """job.batches(), observing time to first token and inter-token latency as the engine produced the tokens
        (a reader that fell behind, or a response that does not stream, receives several at once)."""
        start = last = time.perf_counter()
        first = True
        async with contextlib.aclosing(job.batches()) as batches:
            async for batch in batches:
                for event in batch:
                    if isinstance(event, TokenEvent):
                        now = event.at
                        if first:
                            self.ttft.observe(now - start)
                        else:
                            self.itl.observe(now - last)
                        first, last = False, now
                yield batch


class CountRequests:
    """ASGI middleware counting responses by route template and status."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_and_record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            self.metrics.requests.labels(getattr(route, "path", "unmatched"), str(status)).inc()
