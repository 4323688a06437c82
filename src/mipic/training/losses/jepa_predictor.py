"""JEPAPredictor: maps the context encoder's states to predictions of the target's states at masked positions."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

PredictorKind = Literal["mlp", "transformer"]


class JEPAPredictor(nn.Module):
    r"""Predicts the target encoder's (normalised) states at the masked positions.

    ``kind="mlp"``: a per-token MLP :math:`H \to d \to \dots \to H` with ``depth`` hidden layers (GELU).
    It sees only the context state at the masked position, which already carries that position's
    embedding and attended to the whole (corrupted) sentence.

    ``kind="transformer"``: :math:`H \to d`, ``depth`` pre-LN transformer layers over the whole
    sequence (padding masked out), LayerNorm, :math:`d \to H`; the predictor can then re-read the
    context around each masked span, as in I-JEPA's narrow predictor.

    Inputs:
        hidden: (B, T, H) context-encoder states.
        attention_mask: (B, T), 1 = real token.
        positions: (B, T) bool, the masked positions to predict.

    Returns:
        (M, H) predictions, M = ``positions.sum()``, in row-major (batch, token) order.
    """

    def __init__(
        self,
        hidden_size: int,
        kind: PredictorKind = "mlp",
        depth: int = 1,
        width: int | None = None,
        num_heads: int = 4,
    ) -> None:
        super().__init__()
        if kind not in ("mlp", "transformer"):
            raise ValueError(f"predictor kind must be 'mlp' or 'transformer', got {kind!r}")
        if depth < 1:
            raise ValueError(f"predictor depth must be >= 1, got {depth}")
        width = hidden_size if width is None else width
        if width < 1:
            raise ValueError(f"predictor width must be >= 1, got {width}")
        if kind == "transformer" and width % num_heads:
            raise ValueError(f"predictor width {width} is not divisible by num_heads {num_heads}")
        self.kind: PredictorKind = kind
        self.depth = depth
        self.width = width
        self.inp = nn.Linear(hidden_size, width)
        self.out = nn.Linear(width, hidden_size)
        self.mlp: nn.Sequential | None = None
        self.blocks: nn.TransformerEncoder | None = None
        self.norm: nn.LayerNorm | None = None
        if kind == "mlp":
            layers: list[nn.Module] = [nn.GELU()]
            for _ in range(depth - 1):
                layers += [nn.Linear(width, width), nn.GELU()]
            self.mlp = nn.Sequential(*layers)
        else:
            layer = nn.TransformerEncoderLayer(
                width, num_heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True,
            )  # fmt: skip
            self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(width)

    def forward(self, hidden: Tensor, attention_mask: Tensor, positions: Tensor) -> Tensor:
        if hidden.dim() != 3 or positions.shape != hidden.shape[:2] or attention_mask.shape != hidden.shape[:2]:
            raise ValueError(
                f"need hidden (B, T, H) with attention_mask and positions (B, T), got {tuple(hidden.shape)}, "
                f"{tuple(attention_mask.shape)}, {tuple(positions.shape)}"
            )
        if self.mlp is not None:
            # Per token: run only the masked rows (15% of the tokens).
            return self.out(self.mlp(self.inp(hidden[positions])))  # (M, H)
        assert self.blocks is not None and self.norm is not None
        x = self.blocks(self.inp(hidden), src_key_padding_mask=~attention_mask.bool())  # (B, T, d)
        return self.out(self.norm(x[positions]))  # (M, H)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, depth={self.depth}, width={self.width}"
