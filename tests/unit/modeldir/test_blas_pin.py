"""The server pins NumPy's BLAS to one thread once instead of limiting it around every exit head."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import contextlib
from threadpoolctl import threadpool_info
from mipic.modeldir import runner
before = runner._single_thread_blas()
assert not isinstance(before, contextlib.nullcontext)  # limited around each head until pinned
runner.pin_single_thread_blas()
assert isinstance(runner._single_thread_blas(), contextlib.nullcontext)
blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
assert blas and all(n == 1 for n in blas), blas
print("ok")
"""


def test_pinning_sets_blas_to_one_thread_for_the_process_and_skips_the_per_head_limit() -> None:
    # in a child process: the pin lasts for the process, and must not reach the test runner's
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
