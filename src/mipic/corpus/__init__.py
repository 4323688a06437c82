"""Embed a corpus at a budget, offline: read JSONL / CSV / Parquet in windows, run the staged runner, write
Parquet or ``.npy``; resumable, on one machine (``job``) or on a Ray cluster (``ray_runner``).

Depends on ``modeldir`` only (no service, no training, no torch)."""
