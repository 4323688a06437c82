"""The model-directory contract and its runner, below both the service and training.

manifest (schema, checksums, budget table) · repository (versions, CURRENT) · runtime (the only
onnxruntime import) · tokenizer · heads (exit heads file) · vector (pool → head → truncate →
normalise, once) · runner (staged early exit, golden check). No FastAPI, no torch.
"""
