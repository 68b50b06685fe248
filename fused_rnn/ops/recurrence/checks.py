"""Argument checks of the recurrence entry points: every message names the argument and
what was expected, so a wrong call fails here and never inside a kernel."""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def shape_str(shape) -> str:
    return str(tuple(int(s) for s in shape))


def check_float_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def check_like(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``t`` must have ``ref``'s dtype and device."""
    if t.device != ref.device:
        raise RuntimeError(
            f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
            "expected all tensors on the same device"
        )
    if t.dtype != ref.dtype:
        raise TypeError(
            f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}; "
            "expected the same dtype"
        )


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int], meaning: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {shape_str(expected)} = {meaning}, got {shape_str(t.shape)}"
        )


def normalize_lengths(lengths, batch: int, steps: int, name: str = "lengths",
                      allow_zero: bool = False) -> Optional[torch.Tensor]:
    """Lengths as an int64 CPU tensor [batch], each in [1, steps] (or [0, steps])."""
    if lengths is None:
        return None
    if not isinstance(lengths, torch.Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a 1-D tensor or sequence of ints, got {lengths!r}") from e
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {lengths.dtype}")
    if lengths.device.type == "meta":  # its values decide the loop; a meta tensor has none
        raise RuntimeError(f"{name} is on meta, which holds no values; expected lengths on "
                           "the CPU (or the input's device)")
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(
            f"{name} must be 1-D with one entry per batch row, shape ({batch},), "
            f"got shape {shape_str(lengths.shape)}"
        )
    lengths = lengths.to("cpu", torch.int64)
    lo = 0 if allow_zero else 1
    if torch.compiler.is_compiling():
        # The values are data, unknown while tracing: the compiled graph checks them as it runs.
        in_range = ((lengths >= lo) & (lengths <= steps)).all()
        torch._assert_async(in_range, f"{name} must lie in [{lo}, {steps}] (the sequence length)")
        return lengths
    if batch and (int(lengths.min()) < lo or int(lengths.max()) > steps):
        raise ValueError(
            f"{name} must lie in [{lo}, {steps}] (the sequence length), "
            f"got values from {int(lengths.min())} to {int(lengths.max())}"
        )
    return lengths
