"""The cuda backend's attention (``fused_rnn.ops.attention.rowwise``, the kernels of
``csrc/include/fused_rnn/attention_row.cuh``), checked on CPU tensors, where the binding
runs the kernels' per-element functions in the kernels' phases on host threads (the
``cuda_host`` backend of conftest.py): the attention grid of tests/test_attention.py, its
NaN and empty-row cases, gradcheck; and the key limit of the kernels' shared memory.
Where the cuda backend is available, tests/test_low_precision.py and the parity grid run
it on the GPU.
"""

import pytest
import torch

import fused_rnn
from fused_rnn import backends
from fused_rnn.ops.attention.rowwise_limits import max_keys

import test_attention as attn


def _on(name, test, *args):
    with fused_rnn.use_backend(name):
        test(name, *args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("qform", attn.QUERY_FORMS)
@pytest.mark.parametrize("vform", attn.VALID_FORMS)
@pytest.mark.parametrize("score", attn.SCORES)
def test_functional_matches_oracle(cuda_host, score, vform, qform, dtype):
    _on(cuda_host, attn.test_functional_matches_oracle, score, vform, qform, dtype)


@pytest.mark.parametrize("vform", ["lengths_empty_row", "mask"])
@pytest.mark.parametrize("score", attn.SCORES)
def test_gradcheck_float64(cuda_host, score, vform):
    _on(cuda_host, attn.test_gradcheck_float64, score, vform)


@pytest.mark.parametrize("vform", ["lengths", "mask"])
@pytest.mark.parametrize("score", attn.SCORES)
def test_nan_in_valid_key_propagates_to_its_row_only(cuda_host, score, vform):
    _on(cuda_host, attn.test_nan_in_valid_key_propagates_to_its_row_only, score, vform)


@pytest.mark.parametrize("separate_values", [True, False], ids=["values", "values=keys"])
@pytest.mark.parametrize("vform", ["lengths", "mask"])
@pytest.mark.parametrize("score", attn.SCORES)
def test_nan_in_masked_key_changes_nothing(cuda_host, score, vform, separate_values):
    _on(cuda_host, attn.test_nan_in_masked_key_changes_nothing, score, vform, separate_values)


@pytest.mark.parametrize("qform", attn.QUERY_FORMS)
@pytest.mark.parametrize("vform", ["lengths_empty_row", "mask", "none"])
@pytest.mark.parametrize("score", attn.SCORES)
def test_without_weights_context_and_gradients_are_the_same(cuda_host, score, vform, qform):
    _on(cuda_host, attn.test_without_weights_context_and_gradients_are_the_same, score, vform,
        qform)


@pytest.mark.parametrize("vform", ["lengths_empty_row", "mask", "none"])
@pytest.mark.parametrize("name", attn.MODULES)
def test_module_matches_oracle(cuda_host, name, vform):
    _on(cuda_host, attn.test_module_matches_oracle, name, vform)


@pytest.mark.parametrize("score", ["additive", "general"])
def test_strided_parameters_read_as_their_values(cuda_host, score):
    _on(cuda_host, attn.test_strided_parameters_read_as_their_values, score)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_more_keys_than_the_kernels_hold(cuda_host, dtype):
    """The op refuses, naming the limit; the registry refuses the call first, so that auto
    moves on to another backend."""
    most = max_keys(dtype)
    q, k = torch.randn(1, 1, 2, dtype=dtype), torch.randn(1, most + 1, 2, dtype=dtype)
    with pytest.raises(RuntimeError, match=f"at most {most} keys per row"):
        torch.ops.fused_rnn.rowwise_attention_forward(q, k, k, None, None, None, False, 1.0, True)
    call = backends.OpCall("attention", torch.device("cuda"), dtype, {"key_steps": most + 1})
    assert any(f"at most {most} keys" in r for r in backends.get_backend("cuda").extra_reasons(call))
    call = backends.OpCall("attention", torch.device("cuda"), dtype, {"key_steps": most})
    assert backends.get_backend("cuda").extra_reasons(call) == []
    ctx, _, _ = torch.ops.fused_rnn.rowwise_attention_forward(q, k[:, :most], k[:, :most], None, None,
                                                              None, False, 1.0, False)
    want = torch.softmax(q @ k[:, :most].transpose(1, 2), -1) @ k[:, :most]
    torch.testing.assert_close(ctx, want)


def test_bad_arguments_are_named():
    q, k = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    ops = torch.ops.fused_rnn
    with pytest.raises(RuntimeError, match="the cuda backend's ops take float32 or float64"):
        ops.rowwise_attention_forward(q.half(), k.half(), k.half(), None, None, None, False, 1.0, True)
    with pytest.raises(RuntimeError, match=r"mask must be a contiguous bool tensor of shape \[2, 5\]"):
        ops.rowwise_attention_forward(q, k, k, None, torch.ones(2, 4, dtype=torch.bool), None,
                                      False, 1.0, True)
    ctx, w, lse = ops.rowwise_attention_forward(q, k, k, None, None, None, False, 1.0, True)
    with pytest.raises(RuntimeError, match="lse must be a Float tensor of shape"):
        ops.rowwise_attention_backward(q, k, k, None, None, None, False, 1.0, lse.double(),
                                       torch.randn_like(ctx), None)
