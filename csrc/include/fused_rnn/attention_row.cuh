// Fused encoder-decoder attention, forward and backward, over raw pointers, sizes and a
// cudaStream_t: no torch. One query row (b, q) at a time: its scores over the keys, the
// masked softmax, the context; backward recomputes the scores from the saved log-sum-exp.
//
// Two score kinds reach the kernels (fused_rnn/ops/attention/function.py maps the four):
//   dot       e_j = scale * q . k_j                 q [D], k_j [D]
//   additive  e_j = v . tanh(q + k_j)               q, k_j projected already; v [D]
// w = softmax over the valid keys j (mask [B, Tk] true, or j < lengths[b]); a row without a
// valid key has zero weights, zero context and lse = -inf. A masked key or value is never
// read. context = sum_j w_j values_j; lse = log sum_j exp(e_j), saved for backward.
//
// Backward of row (b, q), with dctx [Dv] and optional dweights [Tk]:
//   dw_j = dctx . values_j + dweights_j,   ds_j = w_j (dw_j - sum_k w_k dw_k)
//   dot:       dq = scale sum_j ds_j k_j,         dk_j += scale ds_j q
//   additive:  t_jd = tanh(q_d + k_jd), u_jd = ds_j v_d (1 - t_jd^2)
//              dq_d = sum_j u_jd,  dk_jd += u_jd,  dv_d += sum_j ds_j t_jd
//   dvalues_j += w_j dctx
// The key-side gradients (dk, dvalues, dv) sum over the rows of a batch element: one CUDA
// block owns a batch element and walks its query rows in order, so nothing is added
// concurrently and the sums are deterministic; dv comes out per batch element [B, D] and
// the caller sums it.
//
// The per-element functions below are what the kernels compute per thread; the torch
// binding runs them on host threads for CPU tensors (csrc/bindings/rowwise_attention.cpp),
// which is how they are tested without a GPU. The block reductions (max, sums) are the
// kernels' own.
//
// Types: T storage (float, double, __half, __nv_bfloat16), A accumulation (float; double
// for double). Scores and probabilities live in shared memory as A: Tk <= kMaxKeys<A>.
#pragma once

#include <stdint.h>

#include "cell_math.cuh"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include "recurrence_step.cuh"  // to_acc / put of the storage types

namespace fused_rnn {
namespace cuda {

struct AttnShape {
  int64_t B, Tq, Tk, D, Dv;
};

template <typename T, typename A = float>
struct AttnArgs {
  using storage = T;
  using accumulation = A;
  AttnShape s;
  bool additive;
  A scale;                 // dot only
  const T* q;              // [B, Tq, D]
  const T* k;              // [B, Tk, D]
  const T* values;         // [B, Tk, Dv]
  const T* v;              // [D] additive, else nullptr
  const bool* mask;        // [B, Tk] true = attend, or nullptr
  const int64_t* lengths;  // [B] valid keys per row, or nullptr (mask and lengths: not both)
  // forward outputs
  T* context;              // [B, Tq, Dv]
  T* weights;              // [B, Tq, Tk] or nullptr
  A* lse;                  // [B, Tq] (forward: written; backward: read)
  // backward inputs and outputs
  const T* dctx;           // [B, Tq, Dv]
  const T* dweights;       // [B, Tq, Tk] or nullptr
  A* dq;                   // [B, Tq, D]
  A* dk;                   // [B, Tk, D], zeroed by the caller, summed over q
  A* dvalues;              // [B, Tk, Dv], zeroed by the caller, summed over q
  A* dv;                   // [B, D] additive: per batch element, zeroed by the caller
};

// Shared memory per block holds three [Tk] arrays of A (backward) besides the 32 slots of
// the block reductions: 48 KiB, the limit of a launch that does not opt in to more, bounds
// the keys a row may have.
template <typename A>
constexpr int64_t kMaxKeys = (48 * 1024 - 32 * int64_t(sizeof(A))) / (3 * int64_t(sizeof(A)));

template <typename T, typename A>
FUSED_RNN_HD bool attends(const AttnArgs<T, A>& a, int64_t b, int64_t j) {
  if (a.mask) return a.mask[b * a.s.Tk + j];
  return !a.lengths || j < a.lengths[b];
}

// e_j of row (b, q); only for a valid key.
template <typename T, typename A>
FUSED_RNN_HD A score(const AttnArgs<T, A>& a, int64_t b, int64_t q, int64_t j) {
  const int64_t D = a.s.D;
  const T* qr = a.q + (b * a.s.Tq + q) * D;
  const T* kr = a.k + (b * a.s.Tk + j) * D;
  A e = A(0);
  if (a.additive) {
    for (int64_t d = 0; d < D; ++d) {
      e += A(to_acc(a.v[d])) * tanh_(A(to_acc(qr[d])) + A(to_acc(kr[d])));
    }
    return e;
  }
  for (int64_t d = 0; d < D; ++d) e += A(to_acc(qr[d])) * A(to_acc(kr[d]));
  return a.scale * e;
}

// context[d] of row (b, q) from its probabilities p [Tk] (read at valid keys) and their sum l.
template <typename T, typename A>
FUSED_RNN_HD void context_elem(const AttnArgs<T, A>& a, int64_t b, int64_t q, int64_t d,
                               const A* p, A l) {
  A c = A(0);
  if (!(l == A(0))) {  // a row without a valid key: 0; NaN propagates
    for (int64_t j = 0; j < a.s.Tk; ++j) {
      if (attends(a, b, j)) c += p[j] * A(to_acc(a.values[(b * a.s.Tk + j) * a.s.Dv + d]));
    }
    c /= l;
  }
  put(a.context + (b * a.s.Tq + q) * a.s.Dv + d, c);
}

// The running maximum of the scores: NaN wins (a NaN score at a valid key makes the row
// NaN, as the reference's softmax), then the larger value.
template <typename A>
FUSED_RNN_HD A nan_max(A m, A e) {
  return (e != e || e > m) ? e : m;
}

// The forward's log-sum-exp from the row's maximum m and sum l of exp(e_j - m).
template <typename A>
FUSED_RNN_HD A log_sum_exp(A m, A l) {
  return l == A(0) ? A(-INFINITY) : m + log_(l);
}

// Backward, key j of row (b, q): w_j from the saved lse, and dw_j.
template <typename T, typename A>
FUSED_RNN_HD void weight_and_grad(const AttnArgs<T, A>& a, int64_t b, int64_t q, int64_t j,
                                  A* w, A* dw) {
  const int64_t row = b * a.s.Tq + q;
  const A lse = a.lse[row];
  if (!attends(a, b, j) || lse == A(-INFINITY)) {  // invalid key, or a row without one
    *w = A(0);
    *dw = A(0);
    return;
  }
  *w = exp_(score(a, b, q, j) - lse);
  const T* vr = a.values + (b * a.s.Tk + j) * a.s.Dv;
  const T* g = a.dctx + row * a.s.Dv;
  A s = a.dweights ? A(to_acc(a.dweights[row * a.s.Tk + j])) : A(0);
  for (int64_t d = 0; d < a.s.Dv; ++d) s += A(to_acc(g[d])) * A(to_acc(vr[d]));
  *dw = s;
}

// Backward, element d < D of row (b, q): dq_d, and (additive) this row's part of dv_d,
// from ds [Tk] (read at valid keys).
template <typename T, typename A>
FUSED_RNN_HD void query_grad_elem(const AttnArgs<T, A>& a, int64_t b, int64_t q, int64_t d,
                                  const A* ds) {
  const int64_t D = a.s.D, row = b * a.s.Tq + q;
  A g = A(0), gv = A(0);
  const A qd = A(to_acc(a.q[row * D + d]));
  for (int64_t j = 0; j < a.s.Tk; ++j) {
    if (!attends(a, b, j)) continue;
    const A kd = A(to_acc(a.k[(b * a.s.Tk + j) * D + d]));
    if (a.additive) {
      const A t = tanh_(qd + kd);
      g += ds[j] * (A(1) - t * t);
      gv += ds[j] * t;
    } else {
      g += ds[j] * kd;
    }
  }
  if (a.additive) {
    a.dq[row * D + d] = g * A(to_acc(a.v[d]));
    a.dv[b * D + d] += gv;
  } else {
    a.dq[row * D + d] = a.scale * g;
  }
}

// Backward, key j, element d < D of row (b, q): adds to dk.
template <typename T, typename A>
FUSED_RNN_HD void key_grad_elem(const AttnArgs<T, A>& a, int64_t b, int64_t q, int64_t j,
                                int64_t d, A ds_j) {
  const int64_t D = a.s.D;
  const A qd = A(to_acc(a.q[(b * a.s.Tq + q) * D + d]));
  A g;
  if (a.additive) {
    const A t = tanh_(qd + A(to_acc(a.k[(b * a.s.Tk + j) * D + d])));
    g = ds_j * A(to_acc(a.v[d])) * (A(1) - t * t);
  } else {
    g = a.scale * ds_j * qd;
  }
  a.dk[(b * a.s.Tk + j) * D + d] += g;
}

// Backward, key j, element d < Dv of row (b, q): adds to dvalues.
template <typename T, typename A>
FUSED_RNN_HD void value_grad_elem(const AttnArgs<T, A>& a, int64_t b, int64_t q, int64_t j,
                                  int64_t d, A w_j) {
  a.dvalues[(b * a.s.Tk + j) * a.s.Dv + d] += w_j * A(to_acc(a.dctx[(b * a.s.Tq + q) * a.s.Dv + d]));
}


// ---------------------------------------------------------------- kernels and launchers
#if defined(__CUDACC__)

constexpr int kAttnThreads = 256;

// The reduction of x over the block with op; every thread gets the result. red: 32 slots.
template <typename A, typename Op>
__device__ A block_reduce(A x, const Op& op, A* red) {
  for (int o = 16; o > 0; o >>= 1) x = op(x, __shfl_xor_sync(0xffffffffu, x, o));
  __syncthreads();  // red may still be read from the previous reduction
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = x;
  __syncthreads();
  A r = red[0];
  for (unsigned w = 1; w < (blockDim.x + 31) / 32; ++w) r = op(r, red[w]);
  return r;
}

// Grid (query rows, batch): one block per row; scores and probabilities in shared memory.
template <typename T, typename A>
__global__ void __launch_bounds__(kAttnThreads) attention_fwd_kernel(const AttnArgs<T, A> a) {
  extern __shared__ unsigned char attn_smem[];
  A* p = reinterpret_cast<A*>(attn_smem);  // [Tk]
  __shared__ A red[32];
  const auto max_op = [](A x, A y) { return nan_max(x, y); };
  const auto sum_op = [](A x, A y) { return x + y; };
  const int64_t Tk = a.s.Tk;
  for (int64_t b = blockIdx.y; b < a.s.B; b += gridDim.y) {
    for (int64_t q = blockIdx.x; q < a.s.Tq; q += gridDim.x) {
      const int64_t row = b * a.s.Tq + q;
      A m = A(-INFINITY);
      for (int64_t j = threadIdx.x; j < Tk; j += blockDim.x) {
        const A e = attends(a, b, j) ? score(a, b, q, j) : A(-INFINITY);
        p[j] = e;
        m = nan_max(m, e);
      }
      m = block_reduce(m, max_op, red);
      A l = A(0);
      for (int64_t j = threadIdx.x; j < Tk; j += blockDim.x) {
        const A pj = attends(a, b, j) && m != A(-INFINITY) ? exp_(p[j] - m) : A(0);
        p[j] = pj;
        l += pj;
      }
      l = block_reduce(l, sum_op, red);  // its barriers also publish p
      if (threadIdx.x == 0) a.lse[row] = log_sum_exp(m, l);
      if (a.weights) {
        for (int64_t j = threadIdx.x; j < Tk; j += blockDim.x) {
          put(a.weights + row * Tk + j, l == A(0) ? A(0) : p[j] / l);
        }
      }
      for (int64_t d = threadIdx.x; d < a.s.Dv; d += blockDim.x) context_elem(a, b, q, d, p, l);
      __syncthreads();  // p is rewritten by the next row
    }
  }
}

// Grid (batch): one block per batch element walks its query rows in order, so that the
// key-side gradients it owns are summed without atomics, deterministically.
template <typename T, typename A>
__global__ void __launch_bounds__(kAttnThreads) attention_bwd_kernel(const AttnArgs<T, A> a) {
  extern __shared__ unsigned char attn_smem[];
  const int64_t Tk = a.s.Tk, D = a.s.D, Dv = a.s.Dv;
  A* w = reinterpret_cast<A*>(attn_smem);  // [Tk] each
  A* dw = w + Tk;
  A* ds = dw + Tk;
  __shared__ A red[32];
  const auto sum_op = [](A x, A y) { return x + y; };
  for (int64_t b = blockIdx.x; b < a.s.B; b += gridDim.x) {
    for (int64_t q = 0; q < a.s.Tq; ++q) {
      A c = A(0);
      for (int64_t j = threadIdx.x; j < Tk; j += blockDim.x) {
        weight_and_grad(a, b, q, j, w + j, dw + j);
        c += w[j] * dw[j];
      }
      c = block_reduce(c, sum_op, red);
      for (int64_t j = threadIdx.x; j < Tk; j += blockDim.x) ds[j] = w[j] * (dw[j] - c);
      __syncthreads();
      for (int64_t d = threadIdx.x; d < D; d += blockDim.x) query_grad_elem(a, b, q, d, ds);
      for (int64_t i = threadIdx.x; i < Tk * D; i += blockDim.x) {
        if (attends(a, b, i / D)) key_grad_elem(a, b, q, i / D, i % D, ds[i / D]);
      }
      for (int64_t i = threadIdx.x; i < Tk * Dv; i += blockDim.x) {
        if (attends(a, b, i / Dv)) value_grad_elem(a, b, q, i / Dv, i % Dv, w[i / Dv]);
      }
      __syncthreads();  // w, dw, ds are rewritten by the next row
    }
  }
}

// The launchers return cudaGetLastError() after the launch (cudaSuccess with nothing to do),
// cudaErrorInvalidValue past kMaxKeys<A> keys.
template <typename T, typename A = float>
cudaError_t attention_forward(const AttnArgs<T, A>& a, cudaStream_t stream) {
  if (a.s.B == 0 || a.s.Tq == 0) return cudaSuccess;
  if (a.s.Tk > kMaxKeys<A>) return cudaErrorInvalidValue;
  const dim3 grid(unsigned(a.s.Tq < 65535 ? a.s.Tq : 65535), unsigned(a.s.B < 65535 ? a.s.B : 65535), 1u);
  attention_fwd_kernel<<<grid, kAttnThreads, size_t(a.s.Tk) * sizeof(A), stream>>>(a);
  return cudaGetLastError();
}

template <typename T, typename A = float>
cudaError_t attention_backward(const AttnArgs<T, A>& a, cudaStream_t stream) {
  if (a.s.B == 0 || a.s.Tq == 0) return cudaSuccess;
  if (a.s.Tk > kMaxKeys<A>) return cudaErrorInvalidValue;
  const dim3 grid(unsigned(a.s.B < 65535 ? a.s.B : 65535), 1u, 1u);
  attention_bwd_kernel<<<grid, kAttnThreads, 3 * size_t(a.s.Tk) * sizeof(A), stream>>>(a);
  return cudaGetLastError();
}

#endif  // __CUDACC__

}  // namespace cuda
}  // namespace fused_rnn
