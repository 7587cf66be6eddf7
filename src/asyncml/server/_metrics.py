"""Prometheus metrics: what the server answered, and what its models, pipelines and event
loop report.

Requests are counted in plain dicts on the event loop (a few dict operations per request,
no locks); everything else is read at scrape time from public snapshots: each model's or
pipeline's ``statistics()`` and the event loop's :class:`~asyncml.LoopLagMonitor`. Each app
has its own registry, so two apps in one process never share or clash over metrics.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .._looplag import LoopLagMonitor
from .._stats import ModelStatistics
from ..pipeline import PipelineStatistics
from ._models import Models, State

#: Upper bounds (seconds) of the request-duration histogram's buckets.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The status recorded for a request whose client disconnected before its answer (as nginx).
CLIENT_GONE = 499


class RequestMetrics:
    """Counts of requests by (model, endpoint, status) and their durations by (model, endpoint)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        # per (model, endpoint): a count per bucket (the last one is +Inf), then the sum
        self.durations: dict[tuple[str, str], tuple[list[int], list[float]]] = {}

    def record(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        """Counts one answered request."""
        key = (model, endpoint, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        histogram = self.durations.get((model, endpoint))
        if histogram is None:
            histogram = self.durations[(model, endpoint)] = (
                [0] * (len(DURATION_BUCKETS) + 1),
                [0.0],
            )
        histogram[0][bisect_left(DURATION_BUCKETS, seconds)] += 1
        histogram[1][0] += seconds


class ServerCollector(Collector):
    """Yields every metric of one app at scrape time."""

    def __init__(
        self, requests: RequestMetrics, models: Models, lag: Callable[[], LoopLagMonitor | None]
    ):
        self._requests = requests
        self._models = models
        self._lag = lag

    def collect(self) -> Iterator[Metric]:
        yield from self._request_metrics()
        yield from self._model_metrics()
        yield from self._pipeline_metrics()
        yield from self._lag_metrics()

    def _request_metrics(self) -> Iterator[Metric]:
        counts = CounterMetricFamily(
            "asyncml_http_requests",
            "HTTP requests answered, by model, endpoint and status (499: the client left)",
            labels=["model", "endpoint", "status"],
        )
        for (model, endpoint, status), count in sorted(self._requests.counts.items()):
            counts.add_metric([model, endpoint, str(status)], count)
        yield counts
        durations = HistogramMetricFamily(
            "asyncml_http_request_duration_seconds",
            "Time from a request's arrival to its answer, by model and endpoint",
            labels=["model", "endpoint"],
        )
        for (model, endpoint), (buckets, total) in sorted(self._requests.durations.items()):
            bounds = [*(str(b) for b in DURATION_BUCKETS), "+Inf"]
            cumulative, running = [], 0
            for bound, count in zip(bounds, buckets, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            durations.add_metric([model, endpoint], cumulative, sum_value=total[0])
        yield durations

    def _model_metrics(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "asyncml_model_ready", "1 while the model is ready to serve", labels=["model"]
        )
        workers = GaugeMetricFamily("asyncml_model_workers", "Model workers", labels=["model"])
        queued = GaugeMetricFamily(
            "asyncml_model_queue_depth", "Items waiting in the model's queue", labels=["model"]
        )
        in_flight = GaugeMetricFamily(
            "asyncml_model_in_flight_items", "Items in running batches", labels=["model"]
        )
        items = CounterMetricFamily(
            "asyncml_model_items",
            "Items that left the model, by outcome",
            labels=["model", "outcome"],
        )
        batches = HistogramMetricFamily(
            "asyncml_model_batch_size", "Items per dispatched batch", labels=["model"]
        )
        latency = GaugeMetricFamily(
            "asyncml_model_latency_seconds",
            "Item latency (queue and compute) over recent items, by quantile",
            labels=["model", "quantile"],
        )
        restarts = CounterMetricFamily(
            "asyncml_worker_restarts",
            "Dead workers replaced (process executor: processes; Ray executor: actors)",
            labels=["model"],
        )
        for served in self._models:
            name, state = served.name, served.state
            ready.add_metric([name], 1.0 if state is State.READY else 0.0)
            if not served.started or served.kind != "model":  # loading, failed to start, or
                continue  # a pipeline (see _pipeline_metrics)
            stats = served.model.statistics()
            assert isinstance(stats, ModelStatistics)
            workers.add_metric([name], stats.workers)
            queued.add_metric([name], stats.queued)
            in_flight.add_metric([name], stats.in_flight)
            for outcome in ("completed", "failed", "timed_out", "cancelled"):
                items.add_metric([name, outcome], getattr(stats, outcome))
            batches.add_metric([name], _batch_buckets(stats.batch_sizes), sum_value=_items(stats))
            for quantile, ms in (("0.5", stats.latency.p50_ms), ("0.99", stats.latency.p99_ms)):
                latency.add_metric([name, quantile], ms / 1e3)
            restarts.add_metric([name], stats.worker_restarts)
        yield from (ready, workers, queued, in_flight, items, batches, latency, restarts)

    def _pipeline_metrics(self) -> Iterator[Metric]:
        labels = ["model", "stage"]
        queued = GaugeMetricFamily(
            "asyncml_pipeline_stage_queue_depth",
            "Items waiting in the stage's input queue (or for a retry)",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "asyncml_pipeline_stage_in_flight_items", "Items the stage works on", labels=labels
        )
        done = CounterMetricFamily(
            "asyncml_pipeline_stage_items",
            "Items the stage finished with (passed on or failed for good), and items it "
            "dropped unrun because their request was withdrawn, by outcome",
            labels=[*labels, "outcome"],
        )
        retries = CounterMetricFamily(
            "asyncml_pipeline_stage_retries",
            "Tries the stage repeated after a failure",
            labels=labels,
        )
        for served in self._models:
            if not served.started or served.kind != "pipeline":
                continue
            stats = served.model.statistics()
            assert isinstance(stats, PipelineStatistics)
            for stage in stats.stages:
                key = [served.name, stage.name]
                queued.add_metric(key, stage.queued)
                in_flight.add_metric(key, stage.in_flight)
                done.add_metric([*key, "ok"], stage.done - stage.failures)
                done.add_metric([*key, "failed"], stage.failures)
                done.add_metric([*key, "withdrawn"], stage.withdrawn)
                retries.add_metric(key, stage.retries)
        yield from (queued, in_flight, done, retries)

    def _lag_metrics(self) -> Iterator[Metric]:
        monitor = self._lag()
        if monitor is None:
            return
        lag = monitor.statistics().lag
        family = GaugeMetricFamily(
            "asyncml_event_loop_lag_seconds",
            "How late the event loop ran a timer, over recent samples, by quantile",
            labels=["quantile"],
        )
        for quantile, ms in (("0.5", lag.p50_ms), ("0.99", lag.p99_ms), ("1", lag.max_ms)):
            family.add_metric([quantile], ms / 1e3)
        yield family


def _batch_buckets(sizes: Mapping[int, int]) -> list[tuple[str, float]]:
    """Cumulative batch counts at powers of two, up to the largest batch seen."""
    largest = max(sizes, default=1)
    bounds = [1]
    while bounds[-1] < largest:
        bounds.append(bounds[-1] * 2)
    buckets = [(str(b), float(sum(n for s, n in sizes.items() if s <= b))) for b in bounds]
    return [*buckets, ("+Inf", float(sum(sizes.values())))]


def _items(stats: ModelStatistics) -> float:
    return float(sum(size * count for size, count in stats.batch_sizes.items()))


def new_registry(collector: Collector) -> CollectorRegistry:
    """A registry of its own holding ``collector``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in Prometheus' text format."""
    return generate_latest(registry)
