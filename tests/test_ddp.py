"""DistributedDataParallel: a fused model trained by 2 gloo processes on CPU gets the
gradients a single process gets on the concatenated batch."""

import gc
import os
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fused_rnn
from fused_rnn import backends

T, B_PER_RANK, I, H, CLASSES = 6, 4, 5, 7, 3
WORLD = 2
# The interpreted triton backend would make each process slow; a compiled one is the point.
BACKEND = "cpu" if "cpu" in backends.available_backends() else "reference"


class Tagger(torch.nn.Module):
    """A bidirectional 2-layer LSTM with a GRU cell on top and a classifier."""

    def __init__(self):
        super().__init__()
        self.lstm = fused_rnn.LSTM(I, H, num_layers=2, bidirectional=True)
        self.cell = fused_rnn.GRUCell(2 * H, H)
        self.out = torch.nn.Linear(H, CLASSES)

    def forward(self, x):
        y, _ = self.lstm(x)
        h = None
        for t in range(y.shape[0]):
            h = self.cell(y[t], h)
        return self.out(h)


def _model_and_data():
    torch.manual_seed(0)
    model = Tagger()
    x = torch.randn(T, WORLD * B_PER_RANK, I)
    target = torch.randint(0, CLASSES, (WORLD * B_PER_RANK,))
    return model, x, target


def _worker(rank: int, init_file: str, out_file: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        with fused_rnn.use_backend(BACKEND):
            model, x, target = _model_and_data()
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            rows = slice(rank * B_PER_RANK, (rank + 1) * B_PER_RANK)
            loss = torch.nn.functional.cross_entropy(ddp(x[:, rows]), target[rows])
            loss.backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in model.named_parameters()}, out_file)
        # torch's ProcessGroupGloo destructor (run when the DDP reducer, its last owner, goes)
        # joins gloo's threads while holding the GIL, and a gloo thread may still need the
        # GIL to drop the Python state its last work captured: a deadlock, seen in ~1 of 5
        # runs (torch 2.13, gloo; gdb: ~ProcessGroupGloo in join, the runloop in take_gil).
        # Every rank's work done, and the GIL released a moment, nothing is left to drop.
        dist.barrier()
        time.sleep(0.5)
        del ddp
        gc.collect()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_ddp_gradients_equal_one_process_on_the_whole_batch():
    with tempfile.TemporaryDirectory() as tmp:
        init_file, out_file = os.path.join(tmp, "init"), os.path.join(tmp, "grads.pt")
        mp.spawn(_worker, args=(init_file, out_file), nprocs=WORLD, join=True)
        ddp_grads = torch.load(out_file)
    with fused_rnn.use_backend(BACKEND):
        model, x, target = _model_and_data()
        torch.nn.functional.cross_entropy(model(x), target).backward()
    assert set(ddp_grads) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        # DDP averages the ranks' gradients of their mean losses: the whole batch's mean.
        torch.testing.assert_close(ddp_grads[name], p.grad, rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"grad {name}: {m}")
