"""The exit-heads file: round trip, and every bad file refused with one line naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mipic.modeldir.heads import ExitHeads, load_heads, save_heads
from mipic.modeldir.manifest import ManifestError


def heads(layers: int = 2, hidden: int = 4) -> ExitHeads:
    rng = np.random.default_rng(0)
    return ExitHeads(rng.standard_normal((layers, hidden, hidden)).astype(np.float32),
                     rng.standard_normal((layers, hidden)).astype(np.float32))


def test_round_trip(tmp_path: Path) -> None:
    h = heads()
    save_heads(tmp_path / "heads.npz", h)
    back = load_heads(tmp_path / "heads.npz", 2, 4)
    np.testing.assert_array_equal(back.weight, h.weight)
    np.testing.assert_array_equal(back.bias, h.bias)
    w, b = back.layer(2)
    np.testing.assert_array_equal(w, h.weight[1])
    np.testing.assert_array_equal(b, h.bias[1])


def test_identity_heads_change_nothing() -> None:
    ident = ExitHeads.identity(3, 5)
    x = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    w, b = ident.layer(3)
    np.testing.assert_array_equal(x @ w.T + b, x)


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (lambda p: np.savez(p, weight=np.zeros((2, 4, 3), np.float32), bias=np.zeros((2, 4), np.float32)),
         "do not match the model"),
        (lambda p: np.savez(p, weight=np.zeros((3, 4, 4), np.float32), bias=np.zeros((3, 4), np.float32)),
         "do not match the model"),
        (lambda p: np.savez(p, weight=np.full((2, 4, 4), np.nan, np.float32), bias=np.zeros((2, 4), np.float32)),
         "NaN or infinite"),
        (lambda p: np.savez(p, weights=np.zeros((2, 4, 4), np.float32)), "needs arrays 'weight' and 'bias'"),
        (lambda p: p.write_bytes(b"not a zip"), "not a readable .npz"),
        (lambda p: None, "file is missing"),
    ],
)
def test_bad_files_are_refused_with_one_line_naming_the_file(tmp_path: Path, write, reason: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "heads.npz"
    write(path)
    with pytest.raises(ManifestError) as info:
        load_heads(path, 2, 4)
    message = str(info.value)
    assert message.startswith("heads.npz: ") and reason in message and "\n" not in message
    assert str(tmp_path) not in message


def test_pickled_arrays_are_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "heads.npz"
    np.savez(path, weight=np.array([object()], dtype=object), bias=np.zeros((2, 4), np.float32))
    with pytest.raises(ManifestError, match=r"heads\.npz: not a readable"):
        load_heads(path, 2, 4)
