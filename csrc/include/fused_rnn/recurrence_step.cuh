// Fused pointwise step of the recurrence (LSTM, GRU, RNN tanh/relu), forward and backward, over
// raw pointers, sizes and a cudaStream_t: no torch. One layer and one direction per loop.
//
// The caller (the binding) runs the time loop and the GEMMs (cuBLAS / at::matmul):
//   before the loop   gx = x W_ih^T                       [steps, B, G*H], natural time order
//   forward, step t   gh = h_prev W_hh^T                  [B, G*H]
//                     recurrence_fwd_step                 bias, gates, state, output, saved acts
//                     with a projection (LSTM): h' = h_new W_hr^T, then projection_fwd_post
//   backward, step t  dh_rec = da_h[t+1] W_hh             [B, P] (none at the last step)
//                     with a projection: projection_bwd_pre, then gy = g W_hr
//                     recurrence_bwd_step                 gate gradients da (and da_h), dh, dc
//   after the loop    dh0 = dh + da_h[0] W_hh; dx, dW_ih, dW_hh, db, dW_hr: one GEMM each
// tests/cuda_kernels_host.cpp runs exactly this loop on the CPU (naive GEMMs) as a check.
//
// Sizes: G gates (LSTM 4, GRU 3, RNN 1), H hidden units, P state size (proj_size with an LSTM
// projection, else H). Row b is active at loop step t when t < L_b (L_b = lengths[b], or
// steps without lengths); its natural time position is pos(t, b): t forward, L_b - 1 - t in
// reverse while active, else t (each row reversed within its own length, as torch does).
// An inactive row keeps its state (h, c), outputs zeros and, in backward, passes dh and dc
// through untouched with zero gate gradients (../../../MATH.md, "Lengths and directions").
//
// Types: T is the storage type of activations, outputs and GEMM operands (float, __half,
// __nv_bfloat16); A = float is the accumulation type, and the type of the LSTM cell state and
// of the carried gradients dh, dc, which stay in fp32 across steps as in the reference.
// Buffers "in loop order" are indexed by the loop step t (the caller passes step t's slice);
// those "in natural time order" are [steps, B, .] and indexed by pos(t, b).
#pragma once

#include <stdint.h>

#include "cell_math.cuh"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

namespace fused_rnn {
namespace cuda {

enum Mode : int { kLSTM = 0, kGRU = 1, kRNN_TANH = 2, kRNN_RELU = 3 };  // as csrc/cpu

// f(ModeTag<MODE>{}) for the runtime mode, so one call site reaches every instantiation;
// false for an unknown mode.
template <int MODE>
struct ModeTag {
  static constexpr int value = MODE;
};
template <typename F>
inline bool with_mode(int mode, F&& f) {  // host: launchers and the CPU harness
  switch (mode) {
    case kLSTM: f(ModeTag<kLSTM>{}); return true;
    case kGRU: f(ModeTag<kGRU>{}); return true;
    case kRNN_TANH: f(ModeTag<kRNN_TANH>{}); return true;
    case kRNN_RELU: f(ModeTag<kRNN_RELU>{}); return true;
    default: return false;
  }
}

FUSED_RNN_HD int gate_count(int mode) { return mode == kLSTM ? 4 : mode == kGRU ? 3 : 1; }

// ---------------------------------------------------------------- storage <-> accumulation

FUSED_RNN_HD float to_acc(float v) { return v; }
FUSED_RNN_HD double to_acc(double v) { return v; }
FUSED_RNN_HD void put(float* p, float v) { *p = v; }
FUSED_RNN_HD void put(double* p, double v) { *p = v; }
#if defined(__CUDACC__)
// Explicit intrinsics: torch builds with __CUDA_NO_HALF_CONVERSIONS__ and friends.
FUSED_RNN_HD float to_acc(__half v) { return __half2float(v); }
FUSED_RNN_HD float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
FUSED_RNN_HD void put(__half* p, float v) { *p = __float2half_rn(v); }
FUSED_RNN_HD void put(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
#endif
// The four saved activations of a unit, H apart (LSTM i f g o, GRU r z n hn).
template <typename T, typename A>
FUSED_RNN_HD void put_slots(T* p, int64_t H, A s0, A s1, A s2, A s3) {
  put(p, s0);
  put(p + H, s1);
  put(p + 2 * H, s2);
  put(p + 3 * H, s3);
}

// p[i], or 0 when the optional operand p (a bias, gx, dy, dh_rec) is absent.
template <typename A, typename T>
FUSED_RNN_HD A ld0(const T* p, int64_t i) {
  return p ? A(to_acc(p[i])) : A(0);
}

// ---------------------------------------------------------------- arguments

struct StepShape {
  int64_t steps;           // time steps of the sequence
  int64_t B;               // batch rows
  int64_t H;               // hidden units
  int64_t P;               // state size: proj_size with an LSTM projection, else H
  int64_t t;               // loop step
  bool reverse;            // reverse direction
  const int64_t* lengths;  // [B] row lengths in [0, steps] (device memory), or nullptr

  FUSED_RNN_HD int64_t length(int64_t b) const { return lengths ? lengths[b] : steps; }
  FUSED_RNN_HD bool active(int64_t b) const { return t < length(b); }
  FUSED_RNN_HD int64_t pos(int64_t b) const {
    const int64_t L = length(b);
    return reverse && t < L ? L - 1 - t : t;
  }
};

template <typename T, typename A = float>
struct FwdStepArgs {
  StepShape s;
  const T* gx;      // [steps, B, G*H] x W_ih^T (b_ih may be folded in), natural order; or nullptr
  const T* gh;      // [B, G*H] h_prev W_hh^T of this step, without bias
  const T* b_ih;    // [G*H] or nullptr (LSTM/RNN: the caller may pass b_ih + b_hh here)
  const T* b_hh;    // [G*H] or nullptr (GRU: b_hn, its last H, stays inside the reset product)
  const T* h_prev;  // [B, P] state before the step (GRU: z h; inactive rows: carried)
  T* h_new;         // [B, H] state after the step; with a projection o tanh(c'), 0 on inactive rows
  const A* c_prev;  // [B, H] LSTM cell before the step
  A* c_new;         // [B, H] LSTM cell after the step (a slice of the saved cells)
  T* y;             // [steps, B, P] output, natural order; nullptr with a projection (or unused)
  T* acts;          // [B, 4H] saved activations of this step: LSTM i,f,g,o; GRU r,z,n,hn;
                    // nullptr (RNN, inference); rows inactive at t are not written
  bool proj;        // LSTM with a projection (projection_fwd_post finishes the step)
};

// With dh_rec = da_h[t+1] W_hh (the caller's GEMM) the step's dL/dh' is dh + dh_rec + dy[pos].
template <typename T, typename A = float>
struct BwdStepArgs {
  StepShape s;
  const T* dy;      // [steps, B, P] output gradient, natural order, or nullptr
  const T* dh_rec;  // [B, P] da_h[t+1] W_hh, or nullptr (last step; always with a projection)
  A* dh;            // [B, P] in: the rest of dL/dh' (dh_n at the last step, then what the step
                    // after wrote); out: the part of dL/dh that does not go through W_hh:
                    // dL/dh' on inactive rows; GRU dh' z; else 0. Unused with a projection.
  A* dc;            // [B, H] LSTM: in dL/dc', out dL/dc (in place; kept on inactive rows)
  const T* gy;      // [B, H] LSTM with a projection: g W_hr (see projection_bwd_pre), else nullptr
  const T* acts;    // [B, 4H] saved activations of step t (LSTM, GRU)
  const A* c_prev;  // [B, H] LSTM cell before the step
  const A* c_new;   // [B, H] LSTM cell after the step
  const T* h_prev;  // [B, H] GRU: the state before the step
  const T* h_new;   // [B, H] RNN: the state after the step
  T* da;            // [B, G*H] gate gradients, input side (LSTM i,f,g,o; GRU r,z,n; RNN a), 0 on
                    // inactive rows; may alias acts for LSTM only (read before written)
  T* da_h;          // [B, 3H] GRU hidden side [da_r, da_z, da_n r], or nullptr; LSTM/RNN: = da
};

// LSTM projection, forward, after h_new = (o tanh(c')) W_hr^T.
template <typename T>
struct ProjFwdPostArgs {
  StepShape s;
  const T* h_prev;  // [B, P]
  T* h_new;         // [B, P] in: projected state; out: h_prev kept on inactive rows
  T* y;             // [steps, B, P] output, natural order: h_new, 0 on inactive rows
};

// LSTM projection, backward, before gy = g W_hr.
template <typename T, typename A = float>
struct ProjBwdPreArgs {
  StepShape s;
  const T* dy;      // [steps, B, P] output gradient, natural order, or nullptr
  const T* dh_rec;  // [B, P] da_h[t+1] W_hh, or nullptr at the last step
  A* dh;            // [B, P] in: as BwdStepArgs::dh; out: dh + dh_rec on inactive rows, else 0
  T* g;             // [B, P] dL/dh' = dh + dh_rec + dy on active rows, 0 on inactive (for dW_hr)
};

// ---------------------------------------------------------------- one element (b, j)

// Forward, row b, unit j < H, with the step's recurrent pre-activations given by gh_at(k),
// gate k's (h_prev W_hh^T)[b, k H + j] without bias: fwd_point reads them from a.gh; the
// multi-block whole-sequence kernel (recurrence_grid.cuh) from its own shared memory.
template <int MODE, typename T, typename A, typename GhAt>
FUSED_RNN_HD void fwd_point_with(const FwdStepArgs<T, A>& a, int64_t b, int64_t j, const GhAt& gh_at) {
  const StepShape& s = a.s;
  const int64_t H = s.H, GH = int64_t(gate_count(MODE)) * H, u = b * H + j;
  if (!s.active(b)) {
    if (MODE == kLSTM) a.c_new[u] = a.c_prev[u];
    if (a.proj) {
      put(a.h_new + u, A(0));  // feeds the W_hr GEMM and dW_hr: must be finite
    } else {
      a.h_new[u] = a.h_prev[b * s.P + j];
      if (a.y) put(a.y + (s.t * s.B + b) * s.P + j, A(0));
    }
    return;
  }
  const T* gx = a.gx ? a.gx + (s.pos(b) * s.B + b) * GH : nullptr;  // [G*H]
  // Pre-activation of gate k: W_i x + b_i + W_h h + b_h.
  auto pre = [&](int k) {
    const int64_t c = k * H + j;
    return ld0<A>(gx, c) + A(gh_at(k)) + ld0<A>(a.b_ih, c) + ld0<A>(a.b_hh, c);
  };
  T* y = a.y && !a.proj ? a.y + (s.pos(b) * s.B + b) * s.P + j : nullptr;
  if (MODE == kLSTM) {
    const LstmFwd<A> r = lstm_fwd(pre(0), pre(1), pre(2), pre(3), a.c_prev[u]);
    a.c_new[u] = r.c;
    put(a.h_new + u, r.h);
    if (y) put(y, r.h);
    if (a.acts) put_slots(a.acts + b * 4 * H + j, H, r.i, r.f, r.g, r.o);
  } else if (MODE == kGRU) {
    const int64_t cn = 2 * H + j;
    const A a_nx = ld0<A>(gx, cn) + ld0<A>(a.b_ih, cn);
    const A hn = A(gh_at(2)) + ld0<A>(a.b_hh, cn);
    const GruFwd<A> r = gru_fwd(pre(0), pre(1), a_nx, hn, A(to_acc(a.h_prev[u])));
    put(a.h_new + u, r.h);
    if (y) put(y, r.h);
    if (a.acts) put_slots(a.acts + b * 4 * H + j, H, r.r, r.z, r.n, r.hn);
  } else {
    const A h = rnn_fwd(pre(0), MODE == kRNN_RELU);
    put(a.h_new + u, h);
    if (y) put(y, h);
  }
}

// Forward, row b, unit j < H: the per-step path's, gh from a.gh.
template <int MODE, typename T, typename A>
FUSED_RNN_HD void fwd_point(const FwdStepArgs<T, A>& a, int64_t b, int64_t j) {
  const T* gh = a.gh + b * int64_t(gate_count(MODE)) * a.s.H + j;  // gate k at k H
  fwd_point_with<MODE>(a, b, j, [&](int k) { return to_acc(gh[k * a.s.H]); });
}

// Backward, row b, unit j < H, with dh_rec_at() = (da_h[t+1] W_hh)[b, j] (0 at the last step):
// bwd_point reads it from a.dh_rec; the multi-block kernel from shared memory. A callable, read
// only where needed, as the step kernel always did (a value read up front made ptxas spill it).
template <int MODE, typename T, typename A, typename RecAt>
FUSED_RNN_HD void bwd_point_with(const BwdStepArgs<T, A>& a, int64_t b, int64_t j, const RecAt& dh_rec_at) {
  const StepShape& s = a.s;
  const int64_t H = s.H, GH = int64_t(gate_count(MODE)) * H, u = b * H + j;
  T* da = a.da + b * GH + j;  // [G*H] from unit j
  const bool proj = MODE == kLSTM && a.gy != nullptr;
  // dL/dh' without dy; with a projection projection_bwd_pre has done dh already.
  const A g_carry = proj ? A(0) : a.dh[u] + A(dh_rec_at());
  if (!s.active(b)) {
    for (int k = 0; k < gate_count(MODE); ++k) put(da + k * H, A(0));
    if (MODE == kGRU && a.da_h) {
      for (int k = 0; k < 3; ++k) put(a.da_h + b * GH + k * H + j, A(0));
    }
    if (!proj) a.dh[u] = g_carry;  // dc stays as it is
    return;
  }
  const A g = proj ? A(to_acc(a.gy[u])) : g_carry + ld0<A>(a.dy, (s.pos(b) * s.B + b) * s.P + j);
  if (MODE == kLSTM) {
    const T* acts = a.acts + b * 4 * H + j;
    const A i = to_acc(acts[0]), f = to_acc(acts[H]), gg = to_acc(acts[2 * H]), o = to_acc(acts[3 * H]);
    const LstmBwd<A> r = lstm_bwd(g, a.dc[u], i, f, gg, o, a.c_prev[u], a.c_new[u]);
    put(da, r.da_i);
    put(da + H, r.da_f);
    put(da + 2 * H, r.da_g);
    put(da + 3 * H, r.da_o);
    a.dc[u] = r.dc_prev;
    if (!proj) a.dh[u] = A(0);
  } else if (MODE == kGRU) {
    const T* acts = a.acts + b * 4 * H + j;
    const GruBwd<A> r = gru_bwd(g, A(to_acc(acts[0])), A(to_acc(acts[H])), A(to_acc(acts[2 * H])),
                                A(to_acc(acts[3 * H])), A(to_acc(a.h_prev[u])));
    put(da, r.da_r);
    put(da + H, r.da_z);
    put(da + 2 * H, r.da_n);
    if (a.da_h) {
      T* dah = a.da_h + b * GH + j;
      put(dah, r.da_r);
      put(dah + H, r.da_z);
      put(dah + 2 * H, r.da_hn);
    }
    a.dh[u] = r.dh_direct;
  } else {
    put(da, rnn_bwd(g, A(to_acc(a.h_new[u])), MODE == kRNN_RELU));
    a.dh[u] = A(0);
  }
}

// Backward, row b, unit j < H: the per-step path's, dh_rec from a.dh_rec.
template <int MODE, typename T, typename A>
FUSED_RNN_HD void bwd_point(const BwdStepArgs<T, A>& a, int64_t b, int64_t j) {
  bwd_point_with<MODE>(a, b, j, [&] { return ld0<A>(a.dh_rec, b * a.s.H + j); });
}

// Projection forward post, row b, unit j < P.
template <typename T>
FUSED_RNN_HD void proj_fwd_post_point(const ProjFwdPostArgs<T>& a, int64_t b, int64_t j) {
  const StepShape& s = a.s;
  const int64_t u = b * s.P + j;
  if (s.active(b)) {
    a.y[(s.pos(b) * s.B + b) * s.P + j] = a.h_new[u];
  } else {
    a.h_new[u] = a.h_prev[u];
    put(a.y + (s.t * s.B + b) * s.P + j, 0.0f);
  }
}

// Projection backward pre, row b, unit j < P.
template <typename T, typename A>
FUSED_RNN_HD void proj_bwd_pre_point(const ProjBwdPreArgs<T, A>& a, int64_t b, int64_t j) {
  const StepShape& s = a.s;
  const int64_t u = b * s.P + j;
  const A carry = a.dh[u] + ld0<A>(a.dh_rec, u);
  if (s.active(b)) {
    put(a.g + u, carry + ld0<A>(a.dy, (s.pos(b) * s.B + b) * s.P + j));
    a.dh[u] = A(0);
  } else {
    put(a.g + u, A(0));
    a.dh[u] = carry;
  }
}

// ---------------------------------------------------------------- kernels and launchers
#if defined(__CUDACC__)

constexpr int kThreads = 256;

// Grid: x over units (kThreads per block), y over rows, each looping with the grid's stride
// (B may exceed gridDim.y's limit). Consecutive threads take consecutive units: coalesced.
#define FUSED_RNN_FOR_POINTS(B, N)                                                   \
  for (int64_t b = blockIdx.y; b < (B); b += gridDim.y)                              \
    for (int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x; j < (N);          \
         j += int64_t(gridDim.x) * kThreads)

template <int MODE, typename T, typename A>
__global__ void __launch_bounds__(kThreads) recurrence_fwd_step_kernel(const FwdStepArgs<T, A> a) {
  FUSED_RNN_FOR_POINTS(a.s.B, a.s.H) fwd_point<MODE>(a, b, j);
}

template <int MODE, typename T, typename A>
__global__ void __launch_bounds__(kThreads) recurrence_bwd_step_kernel(const BwdStepArgs<T, A> a) {
  FUSED_RNN_FOR_POINTS(a.s.B, a.s.H) bwd_point<MODE>(a, b, j);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) projection_fwd_post_kernel(const ProjFwdPostArgs<T> a) {
  FUSED_RNN_FOR_POINTS(a.s.B, a.s.P) proj_fwd_post_point(a, b, j);
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) projection_bwd_pre_kernel(const ProjBwdPreArgs<T, A> a) {
  FUSED_RNN_FOR_POINTS(a.s.B, a.s.P) proj_bwd_pre_point(a, b, j);
}

#undef FUSED_RNN_FOR_POINTS

inline dim3 point_grid(int64_t B, int64_t N) {
  const int64_t x = (N + kThreads - 1) / kThreads;
  return dim3(unsigned(x < 65535 ? x : 65535), unsigned(B < 65535 ? B : 65535), 1u);
}

// The launchers return cudaGetLastError() after the launch (cudaSuccess when B or the units
// are 0: nothing is launched).
template <typename T, typename A = float>
cudaError_t recurrence_fwd_step(int mode, const FwdStepArgs<T, A>& a, cudaStream_t stream) {
  if (a.s.B == 0 || a.s.H == 0) return cudaSuccess;
  const dim3 grid = point_grid(a.s.B, a.s.H);
  const bool known = with_mode(mode, [&](auto m) {
    recurrence_fwd_step_kernel<decltype(m)::value><<<grid, kThreads, 0, stream>>>(a);
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

template <typename T, typename A = float>
cudaError_t recurrence_bwd_step(int mode, const BwdStepArgs<T, A>& a, cudaStream_t stream) {
  if (a.s.B == 0 || a.s.H == 0) return cudaSuccess;
  const dim3 grid = point_grid(a.s.B, a.s.H);
  const bool known = with_mode(mode, [&](auto m) {
    recurrence_bwd_step_kernel<decltype(m)::value><<<grid, kThreads, 0, stream>>>(a);
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

template <typename T>
cudaError_t projection_fwd_post(const ProjFwdPostArgs<T>& a, cudaStream_t stream) {
  if (a.s.B == 0 || a.s.P == 0) return cudaSuccess;
  projection_fwd_post_kernel<<<point_grid(a.s.B, a.s.P), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, typename A = float>
cudaError_t projection_bwd_pre(const ProjBwdPreArgs<T, A>& a, cudaStream_t stream) {
  if (a.s.B == 0 || a.s.P == 0) return cudaSuccess;
  projection_bwd_pre_kernel<<<point_grid(a.s.B, a.s.P), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

#endif  // __CUDACC__

}  // namespace cuda
}  // namespace fused_rnn
