"""Fixtures of the real-client tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def hub_session_for_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The suite runs with HF_HUB_OFFLINE=1, and huggingface_hub's offline mode refuses every URL, loopback
    included: lift it for this test's sessions only (they only talk to the local server)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    reset_sessions()
    yield
    monkeypatch.undo()
    reset_sessions()
