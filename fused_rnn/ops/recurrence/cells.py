"""Names and sizes shared by every recurrence backend: modes, gate counts, weights."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

LSTM, GRU, RNN_TANH, RNN_RELU = "LSTM", "GRU", "RNN_TANH", "RNN_RELU"
GATES = {LSTM: 4, GRU: 3, RNN_TANH: 1, RNN_RELU: 1}


class LayerWeights(NamedTuple):
    """The parameters of one layer and direction, in torch.nn's order and shapes.

    G is the gate count (4 LSTM, 3 GRU, 1 RNN), H the hidden size, P the size of the
    hidden state (``proj_size`` if projecting, else H), I the input size.
    """

    w_ih: torch.Tensor  # [G*H, I]
    w_hh: torch.Tensor  # [G*H, P]
    b_ih: Optional[torch.Tensor] = None  # [G*H]
    b_hh: Optional[torch.Tensor] = None  # [G*H]
    w_hr: Optional[torch.Tensor] = None  # [P, H], LSTM with proj_size > 0 only


def split_flat_weights(flat, num_layers: int, num_directions: int, bias: bool) -> list:
    """torch.nn's ``_flat_weights`` -> ``[[LayerWeights per direction] per layer]``."""
    flat = list(flat)
    per = len(flat) // (num_layers * num_directions)
    has_proj = per - 2 - 2 * bias == 1
    if per * num_layers * num_directions != len(flat) or per - 2 - 2 * bias not in (0, 1):
        raise ValueError(
            f"weights: expected {2 + 2 * bias} or {3 + 2 * bias} tensors per layer and direction "
            f"(bias={bias}) for {num_layers} layer(s) x {num_directions} direction(s), "
            f"got {len(flat)} in all"
        )
    layers = []
    for layer in range(num_layers):
        dirs = []
        for d in range(num_directions):
            chunk = flat[(layer * num_directions + d) * per:][:per]
            w_ih, w_hh = chunk[0], chunk[1]
            b_ih, b_hh = (chunk[2], chunk[3]) if bias else (None, None)
            w_hr = chunk[-1] if has_proj else None
            dirs.append(LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr))
        layers.append(dirs)
    return layers
