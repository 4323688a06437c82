"""The trainable exit heads (see ``mipic.modeldir.heads``): one ``nn.Module`` for both ``mipic train`` (heads
trained jointly with the encoder) and ``mipic heads fit`` (heads fitted on frozen features)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations

from mipic.modeldir.heads import ExitHeads

#: How the last layer's head trains: ``fixed`` (its initial map, so the full budget stays what it was),
#: ``orthogonal`` (trained, kept a rotation), ``affine`` (trained like the others, bias included).
LastHead = Literal["fixed", "orthogonal", "affine"]


class ExitHeadsModule(nn.Module):
    """An affine map per layer 1..L-1, and the last layer's head as ``last`` says; ``self(layer, pooled)`` is the
    served pre-truncation vector of ``pooled`` (B, H) at ``layer``, and :meth:`export` the heads as arrays.

    The last head's bias is its initial one, fixed unless ``last="affine"``. A rotation needs no bias: heads that
    start as one (PCA, or a trained rotation) carry zeros there.
    """

    def __init__(self, init: ExitHeads, last: LastHead = "fixed") -> None:
        super().__init__()
        if last not in ("fixed", "orthogonal", "affine"):
            raise ValueError(f"last must be 'fixed', 'orthogonal' or 'affine', got {last!r}")
        n, h = init.num_layers, init.hidden_size
        self.affine = nn.ModuleList()
        for i in range(n - 1):
            lin = nn.Linear(h, h)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(init.weight[i]))
                lin.bias.copy_(torch.from_numpy(init.bias[i]))
            self.affine.append(lin)
        self.last = nn.Linear(h, h)
        with torch.no_grad():
            self.last.weight.copy_(torch.from_numpy(init.weight[-1]))
            self.last.bias.copy_(torch.from_numpy(init.bias[-1]))
        if last != "affine":
            self.last.bias.requires_grad_(False)
        if last == "orthogonal":
            # trivialization: the parameter starts at the initial rotation and stays orthogonal
            parametrizations.orthogonal(self.last, "weight", orthogonal_map="matrix_exp")
        elif last == "fixed":
            self.last.weight.requires_grad_(False)

    def forward(self, layer: int, pooled: Tensor) -> Tensor:
        head: nn.Module = self.last if layer == len(self.affine) + 1 else self.affine[layer - 1]
        out: Tensor = head(pooled)
        return out

    def export(self) -> ExitHeads:
        linears: list[nn.Linear] = [*self.affine, self.last]
        with torch.no_grad():
            weight = np.stack([lin.weight.detach().cpu().float().numpy() for lin in linears])
            bias = np.stack([lin.bias.detach().cpu().float().numpy() for lin in linears])
        return ExitHeads(weight.astype(np.float32), bias.astype(np.float32))
