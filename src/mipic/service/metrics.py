"""Every Prometheus metric the service exports, defined once on a private registry.

With several workers (``workers.Supervisor``) every worker records into Prometheus's multiprocess files
(``PROMETHEUS_MULTIPROC_DIR``) and :meth:`Metrics.exposition` reports all of them, whichever worker is scraped:
counters and histograms summed, each gauge as its ``multiprocess_mode`` says.

Label values are bounded: ``dim`` and ``layer`` come from the manifest's allowed sets (validated before
any observation), ``model_version`` from the loaded manifests, ``endpoint`` and ``status`` from the
routes and the error table.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

#: Where several workers' metrics meet (set by ``workers.Supervisor`` before a worker imports prometheus_client).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Sub-millisecond buckets for the tiny-input CPU case up to several seconds for overload.
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """A fresh set per app instance, so tests and reloads never collide in the global registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # set by workers.Supervisor before this process imported prometheus_client (which then records to files)
        self.multiproc_dir = os.environ.get(MULTIPROC_ENV) or None
        r = self.registry
        self.request_duration = Histogram(
            "mipic_request_duration_seconds",
            "End-to-end embed request latency, by budget.",
            ["endpoint", "dim", "layer", "model_version"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tokenization_duration = Histogram(
            "mipic_tokenization_duration_seconds",
            "Time tokenizing one request.",
            ["model_version"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_duration = Histogram(
            "mipic_queue_duration_seconds",
            "Time an input waited in the queue before its batch started.",
            ["model_version"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inference_duration = Histogram(
            "mipic_inference_duration_seconds",
            "Time running one batch through the staged model.",
            ["model_version"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "mipic_batch_size", "Inputs per executed batch.", ["model_version"],
            buckets=BATCH_SIZE_BUCKETS, registry=r,
        )
        self.batch_tokens = Histogram(
            "mipic_batch_tokens", "Padded tokens per executed batch.", ["model_version"],
            buckets=BATCH_TOKEN_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("mipic_queue_depth", "Inputs waiting in the batch queue (summed over workers).",
                                 registry=r, multiprocess_mode="livesum")
        self.requests = Counter(
            "mipic_requests_total", "Embed requests by endpoint and HTTP status.", ["endpoint", "status"],
            registry=r,
        )
        self.errors = Counter(
            "mipic_errors_total", "Errors by endpoint and error code.", ["endpoint", "code"], registry=r
        )
        self.embeddings = Counter(
            "mipic_embeddings_total", "Embeddings returned, by budget.", ["dim", "layer", "model_version"],
            registry=r,
        )
        self.tokens = Counter("mipic_tokens_total", "Tokens embedded.", ["model_version"], registry=r)
        self.exit_layer_requests = Counter(
            "mipic_exit_layer_requests_total",
            'Embed requests by the exit layer served and how it was chosen (mode: "fixed" by the client, "auto" '
            "by the server under its latency target).",
            ["mode", "layer", "model_version"], registry=r,
        )
        self.model_info = Gauge(
            "mipic_model_info", "1 for the model version being served.",
            ["model", "model_version", "provider"], registry=r, multiprocess_mode="livemax",
        )
        self.ready = Gauge("mipic_ready", "1 when a model is loaded and warmed (with several workers: every one).",
                           registry=r, multiprocess_mode="livemin")
        self.shed_inputs = Counter(
            "mipic_auto_shed_inputs_total",
            "Inputs of layer=auto requests refused (429) at the batch, before any compute, because their batch "
            "would have answered past max_latency_ms (the requests also count in mipic_errors_total, code "
            "overloaded).", registry=r,
        )
        self._shed_seen = 0

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape returns and its content type: this process's registry, or with several workers
        every worker's multiprocess files."""
        if not self.multiproc_dir:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry, self.multiproc_dir)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def retire_model(self, name: str, version: str, provider: str) -> None:
        """A swapped-out version leaves ``mipic_model_info``: removed, or with several workers set to 0 (the
        multiprocess files cannot remove a series; ``livemax`` then shows 0 once every worker has switched)."""
        self.model_info.labels(name, version, provider).set(0)
        if not self.multiproc_dir:
            self.model_info.remove(name, version, provider)

    def observe_shed(self, total: int) -> None:
        """Bring ``mipic_auto_shed_inputs_total`` up to the batcher's running count ``total`` (read at scrape;
        a count that starts again from zero, a new batcher, is added from there)."""
        if total < self._shed_seen:
            self._shed_seen = 0
        if total > self._shed_seen:
            self.shed_inputs.inc(total - self._shed_seen)
            self._shed_seen = total
