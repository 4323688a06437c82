"""Engine-setting experiments without touching ``src/``: onnxruntime session options patched in for a benchmark.

``session_options(no_spin=True)`` makes every session the engine builds use non-spinning thread pools
(``session.intra_op.allow_spinning = 0``). The staged runtime has one session per stage (7 for MiniLM), each
with its own intra-op pool; by default a pool's threads spin after each run, and on a small machine those
spinning threads take the cores the next stage needs. ``python -m bench.ort_settings serve ...`` runs
``mipic serve`` with the patch (``MIPIC_BENCH_ORT_NO_SPIN=1``) for the served experiment.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any


def _options_class(no_spin: bool) -> Any:
    import onnxruntime as ort

    class PatchedOptions(ort.SessionOptions):
        def __init__(self) -> None:
            super().__init__()
            if no_spin:
                self.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self.add_session_config_entry("session.inter_op.allow_spinning", "0")

    return PatchedOptions


@contextlib.contextmanager
def session_options(no_spin: bool = False) -> Iterator[None]:
    """Sessions created inside the block (by ``StagedRuntime``) get the chosen options."""
    from mipic.service.engine import runtime

    original = runtime.ort.SessionOptions
    if not no_spin:
        yield
        return
    runtime.ort.SessionOptions = _options_class(no_spin)  # module attribute of onnxruntime, restored below
    try:
        yield
    finally:
        runtime.ort.SessionOptions = original


def main() -> None:
    """``python -m bench.ort_settings serve ARGS``: ``mipic serve ARGS`` with the options from the environment."""
    if os.environ.get("MIPIC_BENCH_ORT_NO_SPIN") == "1":
        from mipic.service.engine import runtime

        runtime.ort.SessionOptions = _options_class(True)
    from mipic.cli import app

    sys.argv = ["mipic", *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()
