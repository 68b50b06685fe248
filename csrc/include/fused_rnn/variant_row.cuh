// Fused step of the variant recurrences (LayerNorm LSTM/GRU, zoneout; the equations are
// fused_rnn/ops/variants/layout.py's), forward and backward, over raw pointers, sizes and a
// cudaStream_t: no torch. One block per batch row: a row's layer norms reduce over its
// G*H gate pre-activations and its H cells, which one block owns.
//
// The caller (csrc/stepwise/variant_loop.h) runs the time loop and everything that spans
// all steps (through ATen: cuBLAS and torch's layer norm on CUDA):
//   before the loop   gi = ln_ih * LN(x W_ih^T) + b_ih, or x W_ih^T + b_ih   [steps, B, G*H]
//   forward, step t   gh = h_prev W_hh^T                                      [B, G*H]
//                     variant_fwd_row: the hidden side's norm, gates, the cell's norm,
//                     zoneout, state, output, what backward needs
//   backward, step t  dh_rec = dgh[t+1] W_hh                                  [B, H]
//                     variant_bwd_row: through zoneout, the cell's norm, the gates and
//                     the hidden side's norm: da (input side), dah, dgh (= d(h W_hh^T))
//   after the loop    the input side's norm backward, dx, dW_ih, dW_hh, the gains and
//                     biases: one op each over all steps
// Rows, lengths, the reverse direction and the storage types are recurrence_step.cuh's
// (StepShape; T storage, A accumulation; the cell state and carried gradients in A).
// Without layer norm and zoneout the step is torch.nn's LSTM/GRU step.
//
// The row bodies run on a Block (block.cuh): the kernels on the CUDA block, the tests on the
// host stand-in (csrc/bindings/stepwise_variants.cpp runs them for CPU tensors).
#pragma once

#include <stdint.h>

#include "block.cuh"
#include "cell_math.cuh"
#include "recurrence_step.cuh"  // StepShape, modes, to_acc / put / ld0

namespace fused_rnn {
namespace cuda {

constexpr double kLayerNormEps = 1e-5;  // torch.nn.LayerNorm's default, as layout.LN_EPS

FUSED_RNN_HD float rsqrt_(float x) { return 1.0f / sqrtf(x); }
FUSED_RNN_HD double rsqrt_(double x) { return 1.0 / sqrt(x); }

// Slot t of the per-step saved tensors (loop order): [B, .] each. Absent (nullptr) in
// inference; the norms' parts are absent without layer norm.
template <typename T, typename A>
struct VariantSaved {
  T* acts;     // [B, 4H] LSTM i, f, g, o; GRU r, z, n, hn (hn: the hidden side of n)
  T* gh_hat;   // [B, G*H] LN(h W_hh^T)
  A* gh_rstd;  // [B] its 1/sigma
  A* ct;       // [B, H] LSTM: LN(c~) with layer norm, else c~ (the unzoned new cell)
  A* c_rstd;   // [B] LSTM with layer norm: 1/sigma of c~
};

template <typename T, typename A = float>
struct VariantFwdArgs {
  StepShape s;            // P = H
  const T* gi;            // [steps, B, G*H] input side, biased (and normalised), natural order
  const T* gh;            // [B, G*H] h_prev W_hh^T
  const T* b_hh;          // [G*H] or nullptr
  const T* ln_hh;         // [G*H] gain of LN(gh), or nullptr: no layer norm
  const T* ln_c_weight;   // [H] LSTM with layer norm: gain and shift of LN(c~)
  const T* ln_c_bias;     // [H]
  const T* keep_h;        // [steps, B, H] zoneout keeps, natural order, or nullptr
  const T* keep_c;        // [steps, B, H] LSTM, or nullptr
  const T* h_prev;        // [B, H]
  T* h_new;               // [B, H] (inactive rows: h_prev)
  const A* c_prev;        // [B, H] LSTM
  A* c_new;               // [B, H] LSTM (inactive rows: c_prev)
  T* y;                   // [steps, B, H] natural order (inactive rows: 0 at position t)
  VariantSaved<T, A> saved;
};

template <typename T, typename A = float>
struct VariantBwdArgs {
  StepShape s;
  const T* dy;            // [steps, B, H] natural order, or nullptr
  const T* dh_rec;        // [B, H] dgh[t+1] W_hh, or nullptr (the last step)
  A* dh;                  // [B, H] in: the rest of dL/dh'; out: the part of dL/dh that does
                          // not go through W_hh (zoneout's keep_h g, GRU's dh~ z; inactive: dL/dh')
  A* dc;                  // [B, H] LSTM: in dL/dc', out dL/dc (kept on inactive rows)
  const T* ln_hh;         // as forward
  const T* ln_c_weight;
  const T* ln_c_bias;
  const T* keep_h;
  const T* keep_c;
  const A* c_prev;        // [B, H] LSTM: the cell before the step
  const T* h_prev;        // [B, H] GRU: the state before the step
  VariantSaved<T, A> saved;  // forward's slot t (acts is read before da overwrites it)
  T* da;                  // [B, G*H] input-side gate gradients (LSTM: may alias saved.acts)
  T* dah;                 // [B, G*H] GRU: hidden side [da_r, da_z, da_n r]; LSTM: nullptr (= da)
  T* dgh;                 // [B, G*H] with layer norm: dL/d(h W_hh^T); else nullptr (= dah)
  A* dhc;                 // [B, H] LSTM with layer norm: dL/d(ln_c_weight LN(c~) + ln_c_bias)
};

// f(ModeTag<mode>{}) for a variant mode; false for another one.
template <typename F>
inline bool with_variant_mode(int mode, F&& f) {  // host: launchers and the CPU runner
  if (mode == kLSTM) {
    f(ModeTag<kLSTM>{});
  } else if (mode == kGRU) {
    f(ModeTag<kGRU>{});
  } else {
    return false;
  }
  return true;
}

// Mean and 1/sigma (biased variance, as torch.nn.LayerNorm) of v(c), c < n, over the block;
// two passes for accuracy.
template <typename A, typename Block, typename V>
FUSED_RNN_HD Pair<A> row_moments(int64_t n, const V& v, const Block& blk) {
  A s = A(0);
  for (int64_t c = blk.rank(); c < n; c += blk.size()) s += v(c);
  const A mean = blk.sum(s) / A(n);
  A q = A(0);
  for (int64_t c = blk.rank(); c < n; c += blk.size()) {
    const A d = v(c) - mean;
    q += d * d;
  }
  return Pair<A>{mean, rsqrt_(blk.sum(q) / A(n) + A(kLayerNormEps))};
}

// The zoneout mix keep * old + (1 - keep) * new; keep may be absent (no zoneout).
template <typename A, typename T>
FUSED_RNN_HD A zone(const T* keep, int64_t i, A old_v, A new_v) {
  if (!keep) return new_v;
  const A k = A(to_acc(keep[i]));
  return k * old_v + (A(1) - k) * new_v;
}

// ---------------------------------------------------------------- forward, one row

template <int MODE, typename T, typename A, typename Block>
FUSED_RNN_HD void variant_fwd_row(const VariantFwdArgs<T, A>& a, int64_t b, const Block& blk) {
  const StepShape& s = a.s;
  const int64_t H = s.H, GH = int64_t(gate_count(MODE)) * H;
  const VariantSaved<T, A>& sv = a.saved;
  const bool lstm = MODE == kLSTM, cell_norm = lstm && a.ln_c_weight;
  if (!s.active(b)) {  // saved parts are zeroed: the sums after the loop read every row
    for (int64_t j = blk.rank(); j < H; j += blk.size()) {
      const int64_t u = b * H + j;
      a.h_new[u] = a.h_prev[u];
      if (lstm) a.c_new[u] = a.c_prev[u];
      if (a.y) put(a.y + (s.t * s.B + b) * H + j, A(0));
      if (sv.ct) sv.ct[u] = A(0);
    }
    for (int64_t c = blk.rank(); c < 4 * H; c += blk.size()) {
      if (sv.acts) put(sv.acts + b * 4 * H + c, A(0));  // deterministic saved tensors
      if (sv.gh_hat && c < GH) put(sv.gh_hat + b * GH + c, A(0));
    }
    if (blk.rank() == 0) {
      if (sv.gh_rstd) sv.gh_rstd[b] = A(0);
      if (sv.c_rstd) sv.c_rstd[b] = A(0);
    }
    return;
  }
  const T* gh = a.gh + b * GH;
  const T* gi = a.gi + (s.pos(b) * s.B + b) * GH;
  const int64_t zrow = (s.pos(b) * s.B + b) * H;  // zoneout keeps and y
  Pair<A> m{A(0), A(1)};
  if (a.ln_hh) {
    m = row_moments<A>(GH, [&](int64_t c) { return A(to_acc(gh[c])); }, blk);
    if (sv.gh_rstd && blk.rank() == 0) sv.gh_rstd[b] = m.y;
  }
  // The hidden side of gate column c: ln_hh LN(gh) + b_hh, or gh + b_hh.
  const auto hat = [&](int64_t c) { return (A(to_acc(gh[c])) - m.x) * m.y; };
  const auto hidden = [&](int64_t c) {
    const A v = a.ln_hh ? hat(c) * A(to_acc(a.ln_hh[c])) : A(to_acc(gh[c]));
    return v + ld0<A>(a.b_hh, c);
  };
  const auto pre = [&](int64_t c) { return A(to_acc(gi[c])) + hidden(c); };
  // The new state from h~ (and c~): zoneout, then the outputs.
  const auto finish = [&](int64_t j, A h_tilde) {
    const int64_t u = b * H + j;
    const A h = zone(a.keep_h, zrow + j, A(to_acc(a.h_prev[u])), h_tilde);
    put(a.h_new + u, h);
    if (a.y) put(a.y + zrow + j, h);
  };
  A c_sum = A(0);
  for (int64_t j = blk.rank(); j < H; j += blk.size()) {
    const int64_t u = b * H + j;
    if (sv.gh_hat) {
      for (int64_t k = 0; k < gate_count(MODE); ++k) put(sv.gh_hat + b * GH + k * H + j, hat(k * H + j));
    }
    if (lstm) {
      const A i = sigmoid_(pre(j)), f = sigmoid_(pre(H + j)), g = tanh_(pre(2 * H + j));
      const A o = sigmoid_(pre(3 * H + j));
      const A c_tilde = f * a.c_prev[u] + i * g;
      if (sv.acts) put_slots(sv.acts + b * 4 * H + j, H, i, f, g, o);
      if (cell_norm) {  // finished below, once the cell's moments are known
        a.c_new[u] = c_tilde;
        c_sum += c_tilde;
        continue;
      }
      if (sv.ct) sv.ct[u] = c_tilde;
      a.c_new[u] = zone(a.keep_c, zrow + j, a.c_prev[u], c_tilde);
      finish(j, o * tanh_(c_tilde));
    } else {
      const A r = sigmoid_(pre(j)), z = sigmoid_(pre(H + j)), hn = hidden(2 * H + j);
      const A n = tanh_(A(to_acc(gi[2 * H + j])) + r * hn);
      if (sv.acts) put_slots(sv.acts + b * 4 * H + j, H, r, z, n, hn);
      finish(j, n + z * (A(to_acc(a.h_prev[u])) - n));
    }
  }
  if (!cell_norm) return;
  // The cell's norm over its H units; each thread reads back the c~ it wrote.
  const A mean = blk.sum(c_sum) / A(H);
  A q = A(0);
  for (int64_t j = blk.rank(); j < H; j += blk.size()) {
    const A d = a.c_new[b * H + j] - mean;
    q += d * d;
  }
  const A rstd = rsqrt_(blk.sum(q) / A(H) + A(kLayerNormEps));
  if (sv.c_rstd && blk.rank() == 0) sv.c_rstd[b] = rstd;
  for (int64_t j = blk.rank(); j < H; j += blk.size()) {
    const int64_t u = b * H + j;
    const A c_tilde = a.c_new[u], c_hat = (c_tilde - mean) * rstd;
    if (sv.ct) sv.ct[u] = c_hat;
    a.c_new[u] = zone(a.keep_c, zrow + j, a.c_prev[u], c_tilde);
    const A o = sigmoid_(pre(3 * H + j));
    finish(j, o * tanh_(A(to_acc(a.ln_c_weight[j])) * c_hat + A(to_acc(a.ln_c_bias[j]))));
  }
}

// ---------------------------------------------------------------- backward, one row

template <int MODE, typename T, typename A, typename Block>
FUSED_RNN_HD void variant_bwd_row(const VariantBwdArgs<T, A>& a, int64_t b, const Block& blk) {
  const StepShape& s = a.s;
  const int64_t H = s.H, GH = int64_t(gate_count(MODE)) * H;
  const VariantSaved<T, A>& sv = a.saved;
  const bool lstm = MODE == kLSTM, cell_norm = lstm && a.ln_c_weight;
  T* dah = lstm ? a.da : a.dah;  // the hidden side of the gate gradients, before its norm
  const auto carry = [&](int64_t j) { return a.dh[b * H + j] + ld0<A>(a.dh_rec, b * H + j); };
  if (!s.active(b)) {
    for (int64_t j = blk.rank(); j < H; j += blk.size()) {
      a.dh[b * H + j] = carry(j);  // dc stays as it is
      if (a.dhc) a.dhc[b * H + j] = A(0);
    }
    for (int64_t c = blk.rank(); c < GH; c += blk.size()) {
      put(a.da + b * GH + c, A(0));
      if (!lstm) put(dah + b * GH + c, A(0));
      if (a.dgh) put(a.dgh + b * GH + c, A(0));
    }
    return;
  }
  const int64_t zrow = (s.pos(b) * s.B + b) * H;
  const auto keep = [&](const T* k, int64_t j) { return k ? A(to_acc(k[zrow + j])) : A(0); };
  // dL/dh~ of unit j (dL/dh' = carry + dy, through zoneout).
  const auto dh_tilde = [&](int64_t j) {
    return (A(1) - keep(a.keep_h, j)) * (carry(j) + ld0<A>(a.dy, zrow + j));
  };
  const T* acts = sv.acts + b * 4 * H;
  // LSTM: tanh of the output's cell term, and dL/d(that term's argument) = dhc.
  const auto cell_tanh = [&](int64_t j) {
    const A ct = sv.ct[b * H + j];
    return cell_norm ? tanh_(A(to_acc(a.ln_c_weight[j])) * ct + A(to_acc(a.ln_c_bias[j]))) : tanh_(ct);
  };
  const auto dhc_of = [&](int64_t j) {
    const A th = cell_tanh(j);
    return dh_tilde(j) * A(to_acc(acts[3 * H + j])) * (A(1) - th * th);
  };
  Pair<A> cm{A(0), A(0)};  // the cell norm's means of d_hat and d_hat c_hat
  if (cell_norm) {
    Pair<A> p{A(0), A(0)};
    for (int64_t j = blk.rank(); j < H; j += blk.size()) {
      const A dhc = dhc_of(j), d_hat = dhc * A(to_acc(a.ln_c_weight[j]));
      a.dhc[b * H + j] = dhc;
      p.x += d_hat;
      p.y += d_hat * sv.ct[b * H + j];
    }
    p = blk.sum(p);
    cm = Pair<A>{p.x / A(H), p.y / A(H)};
  }
  Pair<A> hm{A(0), A(0)};  // the hidden norm's sums of dah ln_hh and dah ln_hh gh_hat
  const auto hidden_part = [&](int64_t c, A v) {
    put(dah + b * GH + c, v);
    if (a.ln_hh) {  // from dah as stored, as the norm's backward below reads it
      const A d_hat = A(to_acc(dah[b * GH + c])) * A(to_acc(a.ln_hh[c]));
      hm.x += d_hat;
      hm.y += d_hat * A(to_acc(sv.gh_hat[b * GH + c]));
    }
  };
  for (int64_t j = blk.rank(); j < H; j += blk.size()) {
    const int64_t u = b * H + j;
    const A g = carry(j) + ld0<A>(a.dy, zrow + j);  // read before dh[u] is rewritten
    const A dht = (A(1) - keep(a.keep_h, j)) * g, direct = keep(a.keep_h, j) * g;
    if (lstm) {
      const A i = to_acc(acts[j]), f = to_acc(acts[H + j]), gg = to_acc(acts[2 * H + j]);
      const A o = to_acc(acts[3 * H + j]), th = cell_tanh(j), dc = a.dc[u];
      A dcv = (A(1) - keep(a.keep_c, j)) * dc;
      if (cell_norm) {
        const A ct = sv.ct[u];
        dcv += sv.c_rstd[b] * (a.dhc[u] * A(to_acc(a.ln_c_weight[j])) - cm.x - ct * cm.y);
      } else {
        dcv += dht * o * (A(1) - th * th);
      }
      hidden_part(j, dcv * gg * i * (A(1) - i));
      hidden_part(H + j, dcv * a.c_prev[u] * f * (A(1) - f));
      hidden_part(2 * H + j, dcv * i * (A(1) - gg * gg));
      hidden_part(3 * H + j, dht * th * o * (A(1) - o));
      a.dc[u] = dcv * f + keep(a.keep_c, j) * dc;
      a.dh[u] = direct;
    } else {
      const GruBwd<A> r = gru_bwd(dht, A(to_acc(acts[j])), A(to_acc(acts[H + j])),
                                  A(to_acc(acts[2 * H + j])), A(to_acc(acts[3 * H + j])),
                                  A(to_acc(a.h_prev[u])));
      put(a.da + b * GH + j, r.da_r);
      put(a.da + b * GH + H + j, r.da_z);
      put(a.da + b * GH + 2 * H + j, r.da_n);
      hidden_part(j, r.da_r);
      hidden_part(H + j, r.da_z);
      hidden_part(2 * H + j, r.da_hn);
      a.dh[u] = direct + r.dh_direct;
    }
  }
  if (!a.ln_hh) return;
  // The hidden side's norm backward: dgh = rstd (d_hat - mean(d_hat) - gh_hat mean(d_hat gh_hat)).
  hm = blk.sum(hm);  // its barriers also publish dah
  const A m1 = hm.x / A(GH), m2 = hm.y / A(GH), rstd = sv.gh_rstd[b];
  for (int64_t c = blk.rank(); c < GH; c += blk.size()) {
    const A d_hat = A(to_acc(dah[b * GH + c])) * A(to_acc(a.ln_hh[c]));
    put(a.dgh + b * GH + c, rstd * (d_hat - m1 - A(to_acc(sv.gh_hat[b * GH + c])) * m2));
  }
}

// ---------------------------------------------------------------- kernels and launchers
#if defined(__CUDACC__)

constexpr int kVariantThreads = 256;
static_assert(kVariantThreads % 32 == 0 && kVariantThreads <= 1024,
              "DeviceBlock reduces whole warps into 32 slots per sum");

template <int MODE, typename T, typename A>
__global__ void __launch_bounds__(kVariantThreads) variant_fwd_kernel(const VariantFwdArgs<T, A> a) {
  __shared__ A red[64];
  const DeviceBlock<A> blk{red};
  for (int64_t b = blockIdx.x; b < a.s.B; b += gridDim.x) {
    variant_fwd_row<MODE>(a, b, blk);
    __syncthreads();  // red is reused by the next row
  }
}

template <int MODE, typename T, typename A>
__global__ void __launch_bounds__(kVariantThreads) variant_bwd_kernel(const VariantBwdArgs<T, A> a) {
  __shared__ A red[64];
  const DeviceBlock<A> blk{red};
  for (int64_t b = blockIdx.x; b < a.s.B; b += gridDim.x) {
    variant_bwd_row<MODE>(a, b, blk);
    __syncthreads();
  }
}

inline unsigned variant_grid(int64_t B) { return unsigned(B < 65535 ? B : 65535); }

// The launchers return cudaGetLastError() after the launch (cudaSuccess with no rows),
// cudaErrorInvalidValue for a mode other than kLSTM and kGRU.
template <typename T, typename A = float>
cudaError_t variant_fwd_step(int mode, const VariantFwdArgs<T, A>& a, cudaStream_t stream) {
  if (a.s.B == 0 || a.s.H == 0) return cudaSuccess;
  const bool known = with_variant_mode(mode, [&](auto m) {
    variant_fwd_kernel<decltype(m)::value><<<variant_grid(a.s.B), kVariantThreads, 0, stream>>>(a);
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

template <typename T, typename A = float>
cudaError_t variant_bwd_step(int mode, const VariantBwdArgs<T, A>& a, cudaStream_t stream) {
  if (a.s.B == 0 || a.s.H == 0) return cudaSuccess;
  const bool known = with_variant_mode(mode, [&](auto m) {
    variant_bwd_kernel<decltype(m)::value><<<variant_grid(a.s.B), kVariantThreads, 0, stream>>>(a);
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

#endif  // __CUDACC__

}  // namespace cuda
}  // namespace fused_rnn
