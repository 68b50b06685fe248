import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="cpu", choices=("cpu", "cuda"),
                     help="device for benchmarks/test_bench_recurrence.py (default cpu)")


@pytest.fixture(scope="session")
def bench_device(request) -> torch.device:
    name = request.config.getoption("--bench-device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda: no CUDA device on this machine")
    return torch.device(name)
