"""All server settings in one typed, frozen place (environment prefix ``MIPIC_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mipic.modeldir.runner import (
    DEFAULT_ARENA_IDLE_RELEASE_S,
    DEFAULT_ARENA_KEEP_TOKENS,
    DEFAULT_MAX_BATCH_TOKEN_PAIRS,
    DEFAULT_MAX_BATCH_TOKENS,
)

# A repository (versions + CURRENT pointer): the server follows promotions without restart.
DEFAULT_MODEL_DIR = Path("models/all-minilm-l6-v2")


class Settings(BaseSettings):
    """Every knob of the server. Each field says why you would change it."""

    model_config = SettingsConfigDict(env_prefix="MIPIC_", frozen=True, extra="ignore")

    # --- model
    model_dir: Path = Field(
        DEFAULT_MODEL_DIR,
        description="Model directory (staged ONNX + manifest.json), or a repository dir with a CURRENT "
        "pointer. Change it to serve your own export.",
    )
    bootstrap_default: bool = Field(
        True,
        description="Export the packaged all-MiniLM-L6-v2 when model_dir is the default and missing "
        "(needs the training extras). Turn off in images that ship the model.",
    )
    verify_checksums: bool = Field(True, description="Refuse a model whose files do not match the manifest.")
    verify_golden: bool = Field(
        True, description="Refuse a model whose outputs do not match the PyTorch vectors stored at export."
    )
    watch_interval_s: float = Field(
        2.0, ge=0, description="How often to check a repository's CURRENT pointer; 0 = only /admin/reload."
    )

    # --- runtime
    provider: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when onnxruntime-gpu sees a GPU, else CPU. Force cpu to debug."
    )
    workers: int = Field(
        1, ge=1, le=64,
        description="Server processes sharing the port, each a whole server with its own model copy (memory × N) "
        "and 1/N of the cores; /metrics sums them. 2 on 2 cores: 0.99–1.20× the texts/s of 1 at saturation "
        "(medians of two 5-rep runs), a lone request and light load slower, so 1 stays the default. "
        "Measured: README, Benchmarks.",
    )
    intra_op_threads: int = Field(0, ge=0, description="Threads per operator; 0 = onnxruntime default "
                                  "(with several workers: the cores split between them).")
    inter_op_threads: int = Field(1, ge=0, description="Parallel operators; 1 suits these sequential graphs.")
    tokenizer_threads: int = Field(2, ge=1, description="Threads tokenizing requests off the event loop.")
    onnx_arena: Literal["shared", "off", "per-session"] = Field(
        "shared",
        description="CPU memory for intermediates: shared = one arena for all stage sessions, handed back "
        "after each batch (bounded RSS); off = malloc per tensor; per-session = onnxruntime's default, one "
        "arena per stage keeping its peak (several GB after one long batch). Measured: bench/results/memory.md.",
    )
    onnx_thread_pool: Literal["global", "per-session"] = Field(
        "per-session",
        description="Where the stage sessions' operators get their threads: per-session = onnxruntime's default, "
        "one sleeping pool per stage; global = one pool for the process, shared by every stage, whose threads spin "
        "between operators: offline ~1.1x on cores the process has alone, ~0.8x when another process "
        "competes for them, over HTTP level to +10%. Measured: bench/results/thread_pool.md.",
    )
    onnx_arena_keep_tokens: int = Field(
        DEFAULT_ARENA_KEEP_TOKENS, ge=0,
        description="With the shared arena: a batch of at most this many padded tokens keeps the arena's memory "
        "for the next batch instead of handing it back (no page faults on every small batch); what larger batches "
        "grew it by goes back once the engine is idle (onnx_arena_idle_release_s). 0 = every batch counts as large.",
    )
    onnx_arena_idle_release_s: float = Field(
        DEFAULT_ARENA_IDLE_RELEASE_S, ge=0,
        description="With the shared arena: what a batch above the keep threshold grew the arena by is handed back "
        "once the engine has been idle this many seconds, so steady traffic of long texts does not regrow it "
        "batch after batch. 0 = hand back as soon as the queue empties.",
    )

    # --- batching
    max_batch_tokens: int = Field(
        DEFAULT_MAX_BATCH_TOKENS, gt=0,
        description="Padded tokens per batch. Raise on GPU for throughput, lower for latency.",
    )
    max_batch_token_pairs: int = Field(
        DEFAULT_MAX_BATCH_TOKEN_PAIRS, gt=0,
        description="Padded token pairs per batch, rows x longest², attention's T² term: what bounds memory "
        "at long inputs (default: 32 rows of 256 tokens). Lower it to cap RSS, raise it with memory to spare.",
    )
    max_batch_size: int = Field(128, gt=0, description="Rows per batch, whatever their length.")
    max_wait_ms: float = Field(
        2.0, ge=0, description="How long the batcher waits to fill a batch. 0 = run whatever is queued."
    )
    max_queue_size: int = Field(
        4096,
        gt=0,
        description="Queued inputs before 429. Bounds memory and latency under overload; must hold at least "
        "one full request (max_inputs_per_request), or such a request could only ever get 429.",
    )
    auto_max_latency_ms: float = Field(
        250.0, gt=0,
        description="Latency target of a `layer: \"auto\"` request that gives no max_latency_ms: the server "
        "serves the deepest exit it expects to finish within it (docs: adaptive depth).",
    )
    auto_depth_headroom: float = Field(
        0.8, gt=0, le=1,
        description="Share of the target an auto-depth choice may plan for; the rest absorbs the estimate's error. "
        "Lower it if auto requests miss their target, raise it to serve deeper.",
    )
    auto_max_utilisation: float = Field(
        0.7, gt=0, le=1,
        description="Sustained share of the compute an auto-depth choice may leave busy (measured arrivals x the "
        "exit's cost): near saturation latency grows as 1 / (1 - utilisation), so the tail needs room.",
    )
    auto_shed_margin: float = Field(
        0.05, ge=0, lt=1,
        description="Share of an auto-depth request's target held back for answering it: a queued auto request "
        "whose batch is expected to finish later than (1 - margin) x target from its arrival is shed with 429 "
        "before compute (writing the answer under overload takes the rest).",
    )
    retry_after_seconds: int = Field(1, ge=0, description="Retry-After sent with 429 and 503.")
    request_timeout_ms: float = Field(
        30000, gt=0, description="Per-request deadline: inputs still queued past it are dropped (504)."
    )
    warmup: bool = Field(True, description="Run one batch per layer before reporting ready.")

    # --- request limits
    max_inputs_per_request: int = Field(
        2048, gt=0, description="Inputs per request, on every surface (OpenAI's own limit is 2048)."
    )
    max_request_bytes: int = Field(
        4_000_000,
        gt=0,
        description="Request bodies above this get 413. The default fits 2048 inputs of ~2 kB (MiniLM's 256 "
        "tokens of English are ~1.2 kB).",
    )
    max_seq_length: int | None = Field(
        None, gt=1, description="Truncate inputs to this many tokens (default: the manifest's)."
    )
    truncate: bool = Field(True, description="Truncate long inputs; false = reject them with 400.")

    # --- HTTP
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    api_key: SecretStr | None = Field(None, description="If set, embed endpoints need this bearer token.")
    admin_token: SecretStr | None = Field(None, description="Bearer token for /admin/*; unset = disabled.")
    cors_origins: list[str] = Field(default_factory=list, description="CORS is off unless origins are set.")
    drain_timeout_s: float = Field(
        30.0, ge=0,
        description="On SIGTERM, how long accepted requests may take to finish; those still running then get "
        "503 draining. The process exits within this plus SHUTDOWN_MARGIN_S (2 s): keep Kubernetes' "
        "terminationGracePeriodSeconds >= preStop sleep + this + the margin.",
    )
    max_header_bytes: int = Field(
        16384, ge=1024,
        description="Request line plus headers above this many bytes get 431 (h11 and nginx allow 8-16 KiB). "
        "Raise it for very large bearer tokens or cookies.",
    )
    max_header_count: int = Field(100, ge=8, description="More request header lines than this get 431.")
    request_head_timeout_s: float = Field(
        10.0, gt=0,
        description="A connection must send a complete request line and headers within this many seconds of "
        "opening (or of starting its next request), else it is closed (408 if it had started). Bounds "
        "connections that never send a request and slow-loris clients.",
    )
    keep_alive_timeout_s: int = Field(
        5, ge=1,
        description="Idle keep-alive connections are closed after this many seconds. Behind a load balancer "
        "that reuses connections, set it above the balancer's own idle timeout.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Server and access log level."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one JSON object per line (time, level, logger, message) for "
        "mipic's and uvicorn's lines alike. Use json when a log collector parses the lines."
    )

    # --- OpenAI surface
    model_aliases: list[str] = Field(
        default_factory=list,
        description="More names /v1/embeddings accepts for the served model (JSON list), listed by /v1/models: "
        'e.g. ["text-embedding-3-small"] for clients whose default model name you cannot change.',
    )
    accept_any_model: bool = Field(
        False, description="Accept any model name on /v1/embeddings and /v1/models/{id} (the served model answers)."
    )

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> Settings:
        if self.max_queue_size < self.max_inputs_per_request:
            raise ValueError(
                f"max_queue_size ({self.max_queue_size}) must be >= max_inputs_per_request "
                f"({self.max_inputs_per_request}): a request that cannot fit the queue would always get 429"
            )
        return self
