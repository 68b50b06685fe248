"""LayerNorm LSTM (issue 10) on CPU: every backend's variant launchers (``_fwd``/``_bwd``
called directly) against autograd through a plain-PyTorch LN-LSTM loop, in one process;
wall time (median) and the allocator's peak over what was allocated before.

    python -m benchmarks.variants_cpu [--threads 2] [--T 100 --B 64 --I 256 --H 256]
        [--mode LSTM|GRU] [--zoneout 0.1] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from fused_rnn import backends
from fused_rnn.ops.recurrence.cells import GRU, LSTM
from fused_rnn.ops.variants.layout import LN_EPS, VariantWeights, draw_keeps

from .measure import peak_mib, time_ms

CPU = torch.device("cpu")


def plain_loop(mode, x, h0, c0, w: VariantWeights, keep_h, keep_c):
    """The LN-LSTM / LN-GRU of layout.py as anyone would write it: a loop of torch ops."""
    ln = lambda v, g, b=None: F.layer_norm(v, v.shape[-1:], g, b, LN_EPS)  # noqa: E731
    gi = ln(x @ w.w_ih.t(), w.ln_ih) + w.b_ih
    h, c, ys = h0, c0, []
    for t in range(x.shape[0]):
        gh = ln(h @ w.w_hh.t(), w.ln_hh) + w.b_hh
        if mode == LSTM:
            i, f, g, o = (gi[t] + gh).chunk(4, 1)
            ct = f.sigmoid() * c + i.sigmoid() * g.tanh()
            hh = o.sigmoid() * ln(ct, w.ln_c_weight, w.ln_c_bias).tanh()
            c = ct if keep_c is None else keep_c[t] * c + (1 - keep_c[t]) * ct
        else:
            xr, xz, xn = gi[t].chunk(3, 1)
            hr, hz, hn = gh.chunk(3, 1)
            r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
            n = (xn + r * hn).tanh()
            hh = n + z * (h - n)
        h = hh if keep_h is None else keep_h[t] * h + (1 - keep_h[t]) * hh
        ys.append(h)
    return torch.stack(ys), h, c


def make(mode, T, B, I, H, p):
    torch.manual_seed(0)
    G = 4 if mode == LSTM else 3
    r = lambda *s: (torch.randn(*s) * s[-1] ** -0.5).requires_grad_()  # noqa: E731
    one = lambda n: (1 + 0.1 * torch.randn(n)).requires_grad_()  # noqa: E731
    w = VariantWeights(r(G * H, I), r(G * H, H), r(G * H), r(G * H), one(G * H), one(G * H),
                       one(H) if mode == LSTM else None, r(H) if mode == LSTM else None)
    x = torch.randn(T, B, I, requires_grad=True)
    h0 = torch.randn(B, H, requires_grad=True)
    c0 = torch.randn(B, H, requires_grad=True) if mode == LSTM else None
    keep_h, keep_c = draw_keeps(p, True, (T, B, H), mode == LSTM, x.detach())
    dy = torch.randn(T, B, H)
    return x, h0, c0, w, keep_h, keep_c, dy


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--I", type=int, default=256)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--mode", choices=[LSTM, GRU], default=LSTM)
    ap.add_argument("--zoneout", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    mode = args.mode
    x, h0, c0, w, keep_h, keep_c, dy = make(mode, args.T, args.B, args.I, args.H, args.zoneout)
    xd, h0d, c0d = x.detach(), h0.detach(), None if c0 is None else c0.detach()
    wd = VariantWeights(*(None if p is None else p.detach() for p in w))

    rows = {}
    for name in backends.available_backends():
        b = backends.get_backend(name)
        if "variants" not in b.modules or "cpu" not in b.device_types:
            continue
        ops = b.ops("variants")
        args_ = (mode, False, xd, h0d, c0d, wd, None, keep_h, keep_c)

        def fwd(ops=ops, args_=args_):
            with torch.no_grad():
                ops._fwd(*args_, need_saved=False)

        def fwd_bwd(ops=ops, args_=args_):
            with torch.no_grad():
                y, h_n, c_n, saved = ops._fwd(*args_)
                ops._bwd(*args_, saved, dy, None, None)

        rows[f"{name} launchers"] = (fwd, fwd_bwd)

    params = [x, h0] + ([c0] if c0 is not None else []) + [p for p in w if p is not None]

    def plain_fwd():
        with torch.no_grad():
            plain_loop(mode, x, h0, c0, w, keep_h, keep_c)

    def plain_fwd_bwd():
        y, _, _ = plain_loop(mode, x, h0, c0, w, keep_h, keep_c)
        torch.autograd.grad(y, params, dy)

    rows["plain PyTorch loop (autograd)"] = (plain_fwd, plain_fwd_bwd)

    print(f"LN-{mode}, fp32, {args.threads} threads, T={args.T} B={args.B} I={args.I} "
          f"H={args.H}, zoneout p={args.zoneout}")
    print(f"{'':34s} {'fwd ms':>8s} {'fwd+bwd ms':>11s} {'peak MiB':>9s} {'vs plain':>9s}")
    results = {}
    for label, (f, fb) in rows.items():
        tf = time_ms(f, CPU, 2, args.repeats).median_ms
        tfb = time_ms(fb, CPU, 2, args.repeats).median_ms
        results[label] = (tf, tfb, peak_mib(fb, CPU))
    base = results["plain PyTorch loop (autograd)"][1]
    for label, (tf, tfb, peak) in results.items():
        print(f"{label:34s} {tf:8.1f} {tfb:11.1f} {peak:9.1f} {base / tfb:8.2f}x")


if __name__ == "__main__":
    main()
