"""Where the default model's committed training assets live (a leaf: paths only, no imports of the package).

``model.py`` (``heads_init: default``) and ``release.py`` (exporting and saving the default model) both read
these; keeping them here lets the lowest trainable module name an asset without importing the orchestration.
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).parent / "assets"
DEFAULT_HEADS_ASSET = ASSETS_DIR / "minilm_heads.npz"
DEFAULT_HEADS_META = ASSETS_DIR / "minilm_heads.json"
DEFAULT_ADAPTER_DIR = "minilm_adapter"  # under ASSETS_DIR
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
