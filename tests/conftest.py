import pytest
import torch

import fused_rnn
from fused_rnn.testing import testable_backends


@pytest.fixture(autouse=True)
def _seed_and_isolate():
    """Fresh but reproducible random inputs per test, and no backend choice leaking out."""
    torch.manual_seed(1234)
    yield
    fused_rnn.set_backend(None)


@pytest.fixture(params=testable_backends())
def backend(request):
    """Each backend available on this machine, forced for the test's duration."""
    with fused_rnn.use_backend(request.param):
        yield request.param
