"""What LSTM/GRU modules do to their recurrent weights before a forward: headwise
(block-diagonal) ``W_hh`` and DropConnect on ``W_hh``. Both keywords default off, so the
drop-in contract (torch.nn's parameters and ``state_dict``) is untouched unless asked for.

Headwise recurrence (``num_heads = K > 1``, as FlashRNN/sLSTM): the hidden units form K
heads of ``Hh = H / K`` units, and the gates of head k read only the previous state of head k.
``weight_hh_l{n}`` then stores the blocks, ``[K, G*Hh, Hh]``: row ``g*Hh + j`` of block k is
row ``g*H + k*Hh + j`` of torch.nn's dense ``[G*H, H]`` (gate g, unit j of head k), its
column m is column ``k*Hh + m``. :func:`headwise_to_dense` builds that dense matrix; an
``nn.LSTM`` given it computes exactly what the headwise module computes.

DropConnect (``recurrent_dropout = p``, as AWD-LSTM's weight drop): in training, each forward
draws one Bernoulli mask per ``W_hh`` (per layer and direction, in parameter order, from
torch's default generator) and uses ``W_hh * mask / (1 - p)`` for every step of every
sequence in the batch; in evaluation ``W_hh`` as is. The mask touches ``G*H*H`` weights once
per forward, against ``T*B*G*H*H`` multiply-adds of the recurrence that uses them, so it is
applied once here rather than inside every step of the kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_heads(num_heads, hidden_size: int, name: str = "num_heads") -> int:
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"{name} must be a positive int, got {num_heads!r}")
    if hidden_size % num_heads:
        raise ValueError(f"{name} must divide hidden_size: hidden_size={hidden_size} is not a "
                         f"multiple of {name}={num_heads}")
    return num_heads


def headwise_to_dense(blocks: torch.Tensor) -> torch.Tensor:
    """Headwise ``W_hh`` blocks ``[K, G*Hh, Hh]`` -> torch.nn's dense ``[G*H, H]`` (H = K*Hh),
    zero outside the blocks. Differentiable: the gradient of the dense matrix flows back to
    the blocks.

    >>> dense = headwise_to_dense(fused_lstm.weight_hh_l0)   # nn.LSTM's weight_hh_l0
    """
    if blocks.dim() != 3 or blocks.shape[1] % blocks.shape[2]:
        raise ValueError("headwise weight_hh must be 3-D [num_heads, gates * head_size, "
                         f"head_size], got shape {tuple(blocks.shape)}")
    K, GHh, Hh = blocks.shape
    G = GHh // Hh
    dense = blocks.new_zeros(G, K, Hh, K, Hh)  # [gate, head, unit, head, column]
    heads = torch.arange(K, device=blocks.device)
    # Two separated advanced indices put their axis first: the target is [K, G, Hh, Hh].
    dense[:, heads, :, heads, :] = blocks.view(K, G, Hh, Hh)
    return dense.view(G * K * Hh, K * Hh)


def dense_to_headwise(dense: torch.Tensor, num_heads: int) -> torch.Tensor:
    """torch.nn's dense ``W_hh [G*H, H]`` -> the blocks ``[K, G*Hh, Hh]`` of
    :func:`headwise_to_dense`. Raises if ``dense`` has nonzero weights outside the blocks
    (a headwise module cannot hold them)."""
    GH, H = dense.shape
    K = check_heads(num_heads, H)
    Hh, G = H // K, GH // H
    view = dense.view(G, K, Hh, K, Hh)
    heads = torch.arange(K, device=dense.device)
    blocks = view[:, heads, :, heads, :]  # [K, G, Hh, Hh]
    outside = view.clone()
    outside[:, heads, :, heads, :] = 0
    if outside.any():
        raise ValueError(f"dense weight_hh has nonzero weights outside the {K} diagonal blocks "
                         "of the heads; it is not headwise")
    return blocks.reshape(K, G * Hh, Hh).clone()


def drop_connect(w_hh: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``w_hh * mask / (1 - p)`` with one fresh Bernoulli(1 - p) mask in training, ``w_hh``
    otherwise (and when ``p == 0``)."""
    if not training or p == 0:
        return w_hh
    return F.dropout(w_hh, p, training=True)


def check_recurrent_dropout(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"recurrent_dropout must be a number in [0, 1], got {p!r}")
    return float(p)


def check_zoneout(p, proj_size: int = 0) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"zoneout must be a probability in [0, 1), got {p!r}")
    if p > 0 and proj_size > 0:
        raise ValueError(f"zoneout={p} with proj_size={proj_size} is not supported: "
                         "zoneout needs proj_size=0")
    return float(p)
