"""Embed a corpus at a budget, offline: read JSONL / CSV / Parquet in windows, run the staged runner, write
Parquet or ``.npy``; resumable, on one machine (``job``) or on a Ray cluster (``ray_runner``); what a window
run needs wherever it runs is in ``embedder``, below both.

Depends on ``modeldir`` only (no service, no training, no torch)."""

# Rows per window: the unit that is sorted by length, cut into sub-batches, committed and resumed; two windows
# in flight bound the memory.
DEFAULT_WINDOW_ROWS = 4096
# Padded tokens per sub-batch. Smaller than the server's 16384: a corpus has no latency to amortise, and on
# 2 cores 128 rows of 16 tokens ran ~25 % faster at layer 6 than 1024 rows (activations that fit the caches;
# bench/results/corpus_embed.md). Long inputs still get the runner's token-pair limit.
DEFAULT_BATCH_TOKENS = 2048
