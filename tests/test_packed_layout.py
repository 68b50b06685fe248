"""PackedLayout (fused_rnn/modules/packed.py), the modules' PackedSequence <-> padded batch:
exactly torch's pad_packed_sequence / pack_padded_sequence, values and gradients, in the
caller's row order, sorted or not."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fused_rnn.modules.packed import PackedLayout

CASES = {
    "mixed unsorted": ([3, 7, 1, 7, 5], False),
    "mixed sorted": ([7, 7, 5, 3, 1], True),
    "all equal": ([4, 4, 4], False),
    "one row": ([6], True),
}


def packed_input(lengths, enforce_sorted, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(max(lengths), len(lengths), 3, generator=gen, dtype=torch.float64)
    return pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=enforce_sorted)


@pytest.mark.parametrize("case", CASES)
def test_pad_is_torchs_pad_packed_sequence_values_and_gradients(case):
    packed = packed_input(*CASES[case])
    data = packed.data.clone().requires_grad_()
    packed = packed._replace(data=data)
    layout = PackedLayout(packed)
    want, want_lengths = pad_packed_sequence(packed)
    got = layout.pad(data)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(layout.lengths, want_lengths)
    up = torch.randn_like(want)
    (g_got,) = torch.autograd.grad((got * up).sum(), data)
    (g_want,) = torch.autograd.grad((want * up).sum(), data)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_pack_is_torchs_pack_padded_sequence_in_the_inputs_layout(case):
    lengths, enforce_sorted = CASES[case]
    packed = packed_input(lengths, enforce_sorted)
    layout = PackedLayout(packed)
    padded = torch.randn(max(lengths), len(lengths), 5, dtype=torch.float64, requires_grad=True)
    got = layout.pack(padded)
    want = pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=enforce_sorted)
    torch.testing.assert_close(got.data, want.data, rtol=0, atol=0)
    assert torch.equal(got.batch_sizes, want.batch_sizes)
    for a, b in ((got.sorted_indices, want.sorted_indices), (got.unsorted_indices, want.unsorted_indices)):
        assert (a is None and b is None) or torch.equal(a, b)
    up = torch.randn_like(want.data)
    (g_got,) = torch.autograd.grad((got.data * up).sum(), padded)
    (g_want,) = torch.autograd.grad((want.data * up).sum(), padded)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=0)
    # And back: padding what was packed restores every row's steps.
    torch.testing.assert_close(layout.pack(layout.pad(packed.data)).data, packed.data, rtol=0, atol=0)
