// The fused step kernels of kernels.h, written once with at::vec::Vectorized and compiled
// once per CPU capability: the including file defines FUSED_RNN_CAP_NS (the namespace of
// its table) and, for AVX2/AVX512, the target and ATen's CPU_CAPABILITY macros first.
// Only ATen's header-only vector types are used here: no tensors.
#pragma once

#ifndef FUSED_RNN_CAP_NS
#error "define FUSED_RNN_CAP_NS before including kernels_impl.h"
#endif

#include "aten_vec.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels.h"

namespace fused_rnn {
namespace cpu {
namespace FUSED_RNN_CAP_NS {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// f(j, n): the n (<= Vec<T>::size()) elements from j; full vectors, then one partial tail.
template <typename T, typename F>
inline void for_vec(int64_t n, const F& f) {
  constexpr int64_t V = Vec<T>::size();
  int64_t j = 0;
  for (; j + V <= n; j += V) f(j, V);
  if (j < n) f(j, n - j);
}

template <typename T>
inline Vec<T> ld(const T* p, int64_t j, int64_t n) {  // p: [>= j + n]
  return n == Vec<T>::size() ? Vec<T>::loadu(p + j) : Vec<T>::loadu(p + j, n);
}

template <typename T>
inline void st(const Vec<T>& v, T* p, int64_t j, int64_t n) {  // p: [>= j + n]
  if (n == Vec<T>::size()) {
    v.store(p + j);
  } else {
    v.store(p + j, n);
  }
}

// v + p[c, c + n), or v when the optional term p (a bias, gi) is absent.
template <typename T>
inline Vec<T> plus(const Vec<T>& v, const T* p, int64_t c, int64_t n) {
  return p ? v + ld(p, c, n) : v;
}

// The four saved activations of units [j, j + n) into a row's slots [4H].
template <typename T>
inline void store_slots(T* row, int64_t H, int64_t j, int64_t n, const Vec<T>& s0,
                        const Vec<T>& s1, const Vec<T>& s2, const Vec<T>& s3) {
  st(s0, row, j, n);
  st(s1, row, H + j, n);
  st(s2, row, 2 * H + j, n);
  st(s3, row, 3 * H + j, n);
}

// float: ATen's polynomial exp_u20 (a few ulp, no Sleef call), with sigmoid and tanh built on
// it (absolute error ~1e-7, far inside fp32's tolerance); double: Sleef's 1-ulp exp and tanh.
template <typename T>
inline Vec<T> fast_exp(const Vec<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

template <typename T>
inline Vec<T> sigmoid(const Vec<T>& x) {
  const Vec<T> one(T(1));
  return one / (one + fast_exp(x.neg()));
}

template <typename T>
inline Vec<T> tanh_(const Vec<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
    const Vec<T> one(T(1)), two(T(2));
    return two / (one + fast_exp(x * Vec<T>(T(-2)))) - one;
  } else {
    return x.tanh();
  }
}

template <typename T>
inline void copy_units(const T* src, T* dst, int64_t n) {  // src, dst: [n]
  if (src != dst) std::memcpy(dst, src, sizeof(T) * n);
}

template <typename T>
inline void zero_units(T* dst, int64_t n) {  // dst: [n]
  std::memset(dst, 0, sizeof(T) * n);
}

// ---------------------------------------------------------------- register-blocked GEMM

// Accumulators a tile may keep in vector registers: the rest hold the weight vectors of one
// k and the broadcast of the left operand.
#ifndef FUSED_RNN_VEC_REGS
#define FUSED_RNN_VEC_REGS 16
#endif

template <int NV>
constexpr int tile_rows() {
  constexpr int r = (FUSED_RNN_VEC_REGS - NV - 2) / NV;
  return r < 1 ? 1 : r > 8 ? 8 : r;
}

template <typename T, int MR, int NV>
inline void zero_acc(Vec<T> (&acc)[MR][NV]) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec<T>(T(0));
  }
}

// acc[r][v] += sum_k a[r][k] * w[k * NV * V + v * V + (0..V-1)].
// a: MR row pointers, each [>= K]; w: [K, NV vectors] (one packed panel).
template <typename T, int MR, int NV>
inline void tile_gemm(const T* const (&a)[MR], int64_t K, const T* w, Vec<T> (&acc)[MR][NV]) {
  constexpr int64_t V = Vec<T>::size();
  for (int64_t k = 0; k < K; ++k) {
    const T* wk = w + k * NV * V;
    Vec<T> wv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) wv[v] = Vec<T>::loadu(wk + v * V);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const Vec<T> ar(a[r][k]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(ar, wv[v], acc[r][v]);
    }
  }
}

// tile_gemm over bf16 pairs: a[r] and w hold pairs of consecutive k as 32-bit elements
// (a[r][k2] = bf16 (a[2 k2], a[2 k2 + 1]); w [K2, NV vectors of 16 unit pairs]); one dpbf16
// per pair adds both products to the fp32 accumulator. Compiled only where the including
// file enables AVX512-BF16 (FUSED_RNN_BF16_PAIRS); called only there.
template <int MR, int NV>
inline void tile_gemm_pairs(const float* const (&a)[MR], int64_t K2, const float* w,
                            Vec<float> (&acc)[MR][NV]) {
#ifdef FUSED_RNN_BF16_PAIRS
  for (int64_t k = 0; k < K2; ++k) {
    const float* wk = w + k * NV * 16;
    __m512bh wv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) wv[v] = (__m512bh)_mm512_loadu_ps(wk + v * 16);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      float pair;  // two bf16, moved as 32 bits (a float move keeps every bit)
      std::memcpy(&pair, a[r] + k, sizeof(pair));
      const __m512bh ar = (__m512bh)_mm512_set1_ps(pair);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], ar, wv[v]);
    }
  }
#else
  (void)a, (void)K2, (void)w, (void)acc;
#endif
}

// v's first n (<= 16) lanes rounded to bf16 at p.
inline void store_bf16(const Vec<float>& v, uint16_t* p, int64_t n) {
#ifdef FUSED_RNN_BF16_PAIRS
  const __m256i b = (__m256i)_mm512_cvtneps_pbh(v);
  if (n == 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), b);
  } else {
    _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1), b);
  }
#else
  (void)v, (void)p, (void)n;
#endif
}

template <int M>
using Rows = std::integral_constant<int, M>;

// f(Rows<m>{}) for the runtime m in [1, MR]: every row count of a tile is a compile-time
// constant, so its accumulators stay in registers.
template <int MR, typename F>
inline void with_rows(int m, const F& f) {
  if constexpr (MR > 1) {
    if (m < MR) return with_rows<MR - 1>(m, f);
  }
  f(Rows<MR>{});
}

// Row blocks of one panel that share each chunk of its weights while it is in cache.
constexpr int kGroupBlocks = 8;
// Weights per chunk: single-thread runs on Zen 4 (1 MiB L2) put 64 KiB at or near the best of
// 4-64 KiB, within the machine's noise.
constexpr int64_t kChunkBytes = 65536;

// The tiles of the items [i0, i1) of a plan, a group of row blocks of one panel at a time.
// A group's accumulators live in `buf` (memory); its GEMM walks the panel's K rows in chunks
// of kChunkBytes of weights, each chunk used by every row block of the group before the next is
// loaded, so the weights come from L2 once per group instead of once per row block.
//
// The K rows of a panel come in `nseg` segments: segment s has seg_k[s] rows of the packed
// panel (after those of the segments before it) and its left operand for tile row i (of
// 0..B-1, which the caller maps to its batch rows, see ActiveRows) is row(s, i)
// ([>= seg_k[s]]). after(s, g, m, acc) runs once a segment is done for row block g
// (m rows, acc [m][NV] in buf); epi(q, i, g, r, acc_row) once per row at the end.
template <typename T, int NV, int MR, bool PAIRS = false, typename Row, typename After,
          typename Epi>
inline void panel_tiles(const TilePlan& plan, int64_t B, int64_t i0, int64_t i1, const T* w,
                        int nseg, const int64_t* seg_k, const Row& row, const After& after,
                        const Epi& epi) {
  constexpr int64_t V = Vec<T>::size();
  constexpr int64_t KC = std::max<int64_t>(16, kChunkBytes / int64_t(NV * V * sizeof(T)));
  int64_t panel_k = 0;
  for (int s = 0; s < nseg; ++s) panel_k += seg_k[s];
  Vec<T> buf[kGroupBlocks][MR][NV];
  for (int64_t i = i0; i < i1;) {
    const int64_t q = i / plan.row_blocks, rb0 = i % plan.row_blocks;
    const int64_t count = std::min<int64_t>({kGroupBlocks, plan.row_blocks - rb0, i1 - i});
    const T* wq = w + q * panel_k * NV * V;  // [panel_k, NV vectors]
    for (int64_t g = 0; g < count; ++g) zero_acc(buf[g]);
    int64_t k_base = 0;
    for (int s = 0; s < nseg; ++s) {
      for (int64_t k0 = 0; k0 < seg_k[s]; k0 += KC) {
        const int64_t kc = std::min(KC, seg_k[s] - k0);
        for (int64_t g = 0; g < count; ++g) {
          const int64_t b0 = (rb0 + g) * MR;
          with_rows<MR>(int(std::min<int64_t>(MR, B - b0)), [&](auto rows) {
            constexpr int M = decltype(rows)::value;
            const T* ar[M];
            for (int r = 0; r < M; ++r) ar[r] = row(s, b0 + r) + k0;
            Vec<T> acc[M][NV];
#pragma GCC unroll 8
            for (int r = 0; r < M; ++r) {
#pragma GCC unroll 8
              for (int v = 0; v < NV; ++v) acc[r][v] = buf[g][r][v];
            }
            if constexpr (PAIRS) {
              tile_gemm_pairs<M, NV>(ar, kc, wq + (k_base + k0) * NV * V, acc);
            } else {
              tile_gemm<T, M, NV>(ar, kc, wq + (k_base + k0) * NV * V, acc);
            }
#pragma GCC unroll 8
            for (int r = 0; r < M; ++r) {
#pragma GCC unroll 8
              for (int v = 0; v < NV; ++v) buf[g][r][v] = acc[r][v];
            }
          });
        }
      }
      k_base += seg_k[s];
      for (int64_t g = 0; g < count; ++g) {
        after(s, g, int(std::min<int64_t>(MR, B - (rb0 + g) * MR)), buf[g]);
      }
    }
    for (int64_t g = 0; g < count; ++g) {
      const int64_t b0 = (rb0 + g) * MR;
      for (int64_t r = 0; r < std::min<int64_t>(MR, B - b0); ++r) epi(q, b0 + r, g, r, buf[g][r]);
    }
    i += count;
  }
}

// Vectors per panel row: LSTM i,f,g,o and GRU r,z,n of one vector of units, RNN 4 vectors of
// units; the backward 4 vectors of units. The forward GRU holds one more vector per row (the
// input part of n, which the reset gate does not scale), so all tiles fit MR x 4 accumulators.
constexpr int kFwdVecs[4] = {4, 3, 4, 4};  // by Mode
constexpr int kRnnUnitVecs = 4;
constexpr int kBwdUnitVecs = 4;
constexpr int kTileRows = tile_rows<4>();

template <typename T>
TilePlan make_plan(int64_t B, int64_t H, int64_t unit_vecs, int64_t gates) {
  TilePlan p;
  p.units = unit_vecs * Vec<T>::size();
  p.panels = (H + p.units - 1) / p.units;
  p.rows = kTileRows;
  p.row_blocks = (B + kTileRows - 1) / kTileRows;
  p.gates = gates;
  return p;
}

template <typename T>
TilePlan fwd_plan(int64_t mode, int64_t B, int64_t H) {
  if (mode == kLSTM || mode == kGRU) return make_plan<T>(B, H, 1, gate_count(mode));
  return make_plan<T>(B, H, kRnnUnitVecs, 1);
}

template <typename T>
TilePlan bwd_plan(int64_t B, int64_t H) {
  return make_plan<T>(B, H, kBwdUnitVecs, 1);
}

// ---------------------------------------------------------------- forward

// Inactive row, units [j, j + n): keep the state, emit zeros (with a projection the post
// pass does the state and the output).
template <typename T>
inline void carry_units(const FwdStep<T>& a, int64_t b, int64_t j, int64_t n, bool lstm) {
  const auto& s = a.s;
  const int64_t H = s.H, P = s.P;
  if (lstm) copy_units(a.c_prev + b * H + j, a.c_new + b * H + j, n);
  if (a.proj) {
    zero_units(a.h_new + b * H + j, n);  // feeds the W_hr GEMM and dW_hr: must be finite
  } else {
    copy_units(a.h_prev + b * P + j, a.h_new + b * H + j, n);
    if (a.y) zero_units(a.y + (s.t * s.B + b) * P + j, n);
  }
}

// The saved activations of row b, units [j, j + n) of each of its four slots: in T, or
// rounded to bf16 with the bf16 pair GEMM.
template <typename T>
inline void store_acts(const FwdStep<T>& a, int64_t b, int64_t j, int64_t n, const Vec<T>& s0,
                       const Vec<T>& s1, const Vec<T>& s2, const Vec<T>& s3) {
  const int64_t H = a.s.H;
  if (a.acts) store_slots(a.acts + b * 4 * H, H, j, n, s0, s1, s2, s3);
  if constexpr (std::is_same_v<T, float>) {
    if (a.acts_bf16) {
      uint16_t* const row = a.acts_bf16 + b * 4 * H + j;
      store_bf16(s0, row, n);
      store_bf16(s1, row + H, n);
      store_bf16(s2, row + 2 * H, n);
      store_bf16(s3, row + 3 * H, n);
    }
  }
}

// The new state of row b, units [j, j + n); with the bf16 pair GEMM also rounded to bf16,
// the next step's operand.
template <typename T>
inline void store_state(const FwdStep<T>& a, int64_t b, int64_t j, int64_t n, const Vec<T>& h) {
  st(h, a.h_new + b * a.s.H, j, n);
  if constexpr (std::is_same_v<T, float>) {
    if (a.hb_new) store_bf16(h, a.hb_new + b * a.s.H + j, n);
  }
}

// Active row, units [j, j + n), given the gate pre-activations (without bias) pre[gate].
template <typename T>
inline void lstm_fwd_units(const FwdStep<T>& a, int64_t b, int64_t j, int64_t n, const Vec<T>* pre) {
  const auto& s = a.s;
  const int64_t H = s.H;
  const T* bias = a.bias;
  const Vec<T> i = sigmoid(plus(pre[0], bias, j, n));
  const Vec<T> f = sigmoid(plus(pre[1], bias, H + j, n));
  const Vec<T> g = tanh_(plus(pre[2], bias, 2 * H + j, n));
  const Vec<T> o = sigmoid(plus(pre[3], bias, 3 * H + j, n));
  const Vec<T> cn = f * ld(a.c_prev + b * H, j, n) + i * g;
  const Vec<T> h = o * tanh_(cn);
  st(cn, a.c_new + b * H, j, n);
  store_state(a, b, j, n, h);
  if (a.y) st(h, a.y + (s.pos(b) * s.B + b) * H, j, n);  // P == H without a projection
  store_acts(a, b, j, n, i, f, g, o);
}

// pre: r and z pre-activations and W_hn h (no bias); nx = W_in x.
template <typename T>
inline void gru_fwd_units(const FwdStep<T>& a, int64_t b, int64_t j, int64_t n, const Vec<T>* pre,
                          const Vec<T>& nx) {
  const auto& s = a.s;
  const int64_t H = s.H;
  const T* bias = a.bias;
  const Vec<T> r = sigmoid(plus(pre[0], bias, j, n));
  const Vec<T> z = sigmoid(plus(pre[1], bias, H + j, n));
  const Vec<T> hn = plus(pre[2], a.b_hn, j, n);
  const Vec<T> nn = tanh_(plus(nx, bias, 2 * H + j, n) + r * hn);
  const Vec<T> hv = nn + z * (ld(a.h_prev + b * H, j, n) - nn);
  store_state(a, b, j, n, hv);
  if (a.y) st(hv, a.y + (s.pos(b) * s.B + b) * H, j, n);
  store_acts(a, b, j, n, r, z, nn, hn);
}

template <typename T>
inline void rnn_fwd_units(const FwdStep<T>& a, int64_t b, int64_t j, int64_t n, const Vec<T>& pre,
                          bool relu) {
  const auto& s = a.s;
  const int64_t H = s.H;
  const Vec<T> x = plus(pre, a.bias, j, n);
  const Vec<T> hv = relu ? at::vec::clamp_min(x, Vec<T>(T(0))) : tanh_(x);
  store_state(a, b, j, n, hv);
  if (a.y) st(hv, a.y + (s.pos(b) * s.B + b) * H, j, n);
}

// One step: per tile, x_t W_ih^T and h W_hh^T of the panel's units (both GEMMs of the step
// in one pass over the packed [W_ih | W_hh] panel), then the gate math.
template <typename T, int64_t MODE, bool PAIRS = false>
void fwd_tiles(const FwdStep<T>& a, int64_t i0, int64_t i1) {
  constexpr int NV = kFwdVecs[MODE];
  constexpr int64_t V = Vec<T>::size();
  const auto& s = a.s;
  const int64_t G = gate_count(MODE), H = s.H;
  // Without gi the panel is [W_ih | W_hh] and x_t is the first segment; with gi, W_hh only;
  // with gh too, no panel (K = 0).
  // With PAIRS, both segments in pairs of k (the left operands are bf16, read as 32 bits).
  const bool x_seg = a.gi == nullptr;
  const int64_t seg_k[2] = {PAIRS ? a.I / 2 : x_seg ? a.I : a.gh ? 0 : s.P, PAIRS ? s.P / 2 : s.P};
  const auto row = [&](int seg, int64_t i) -> const T* {
    const int64_t b = a.rows[i];
    if constexpr (PAIRS) {
      return reinterpret_cast<const T*>(seg == 0 ? a.xb + (s.pos(b) * s.B + b) * a.I
                                                 : a.hb_prev + b * s.P);
    }
    return x_seg && seg == 0 ? a.x + (s.pos(b) * s.B + b) * a.I : a.h_prev + b * s.P;
  };
  Vec<T> nx[kGroupBlocks][kTileRows];  // GRU: W_in x, which the reset gate does not scale
  const auto after = [&](int seg, int64_t g, int m, Vec<T> (&acc)[kTileRows][NV]) {
    if constexpr (MODE == kGRU) {
      if (x_seg && seg == 0) {
        for (int r = 0; r < m; ++r) {
          nx[g][r] = acc[r][2];
          acc[r][2] = Vec<T>(T(0));
        }
      }
    }
  };
  const auto epi = [&](int64_t q, int64_t i, int64_t g, int64_t r, const Vec<T>* acc) {
    const int64_t b = a.rows[i];
    // LSTM/GRU: one vector of units, acc[gate]; RNN: NV vectors of units.
    constexpr int uv = MODE == kLSTM || MODE == kGRU ? 1 : NV;
    const T* gi = x_seg ? nullptr : a.gi + (s.pos(b) * s.B + b) * G * H;  // [G*H]
    const T* gh = a.gh ? a.gh + b * G * H : nullptr;                       // [G*H]
    for (int u = 0; u < uv; ++u) {
      const int64_t j = q * a.plan.units + u * V, n = std::min<int64_t>(V, H - j);
      if (n <= 0) break;
      if (!s.active(b)) {
        carry_units(a, b, j, n, MODE == kLSTM);
      } else if constexpr (MODE == kLSTM) {
        const Vec<T> pre[4] = {plus(plus(acc[0], gi, j, n), gh, j, n),
                               plus(plus(acc[1], gi, H + j, n), gh, H + j, n),
                               plus(plus(acc[2], gi, 2 * H + j, n), gh, 2 * H + j, n),
                               plus(plus(acc[3], gi, 3 * H + j, n), gh, 3 * H + j, n)};
        lstm_fwd_units(a, b, j, n, pre);
      } else if constexpr (MODE == kGRU) {
        // hn (acc[2]) takes no gi: the input part of n sits outside the reset product.
        const Vec<T> pre[3] = {plus(plus(acc[0], gi, j, n), gh, j, n),
                               plus(plus(acc[1], gi, H + j, n), gh, H + j, n),
                               plus(acc[2], gh, 2 * H + j, n)};
        gru_fwd_units(a, b, j, n, pre, gi ? ld(gi, 2 * H + j, n) : nx[g][r]);
      } else {
        rnn_fwd_units(a, b, j, n, plus(plus(acc[u], gi, j, n), gh, j, n), MODE == kRNN_RELU);
      }
    }
  };
  panel_tiles<T, NV, kTileRows, PAIRS>(a.plan, a.rows.n, i0, i1, a.w, x_seg ? 2 : 1, seg_k, row,
                                       after, epi);
}

template <typename T, bool PAIRS = false>
void fwd(int64_t mode, const FwdStep<T>& a, int64_t i0, int64_t i1) {
  switch (mode) {
    case kLSTM: return fwd_tiles<T, kLSTM, PAIRS>(a, i0, i1);
    case kGRU: return fwd_tiles<T, kGRU, PAIRS>(a, i0, i1);
    case kRNN_TANH: return fwd_tiles<T, kRNN_TANH, PAIRS>(a, i0, i1);
    default: return fwd_tiles<T, kRNN_RELU, PAIRS>(a, i0, i1);
  }
}

// ---------------------------------------------------------------- backward

// Inactive row, units [j, j + n): no gate gradients; dh and dc pass through unchanged.
template <typename T>
inline void zero_gate_grads(const BwdStep<T>& a, int64_t b, int64_t j, int64_t n) {
  const int64_t H = a.s.H;
  for (int64_t slot = 0; slot < a.ld / H; ++slot) zero_units(a.da + b * a.ld + slot * H + j, n);
}

// Active row, units [j, j + n): gate gradients from g = dL/d(o*tanh(c')) over the saved
// i, f, g, o; dc in place.
template <typename T>
inline void lstm_bwd_units(const BwdStep<T>& a, int64_t b, int64_t j, int64_t n, const Vec<T>& g) {
  const int64_t H = a.s.H;
  const Vec<T> one(T(1));
  T* da = a.da + b * a.ld;  // [4H]
  T* dc = a.dc + b * H;     // [H]
  const Vec<T> i = ld(da, j, n), f = ld(da, H + j, n);
  const Vec<T> gg = ld(da, 2 * H + j, n), o = ld(da, 3 * H + j, n);
  const Vec<T> tc = tanh_(ld(a.c_new + b * H, j, n));
  const Vec<T> dcv = ld(dc, j, n) + g * o * (one - tc * tc);
  st(dcv * gg * i * (one - i), da, j, n);
  st(dcv * ld(a.c_prev + b * H, j, n) * f * (one - f), da, H + j, n);
  st(dcv * i * (one - gg * gg), da, 2 * H + j, n);
  st(g * tc * o * (one - o), da, 3 * H + j, n);
  st(dcv * f, dc, j, n);
}

// Over the saved r, z, n, hn; returns the part of dL/dh that does not go through W_hh: g * z.
template <typename T>
inline Vec<T> gru_bwd_units(const BwdStep<T>& a, int64_t b, int64_t j, int64_t n, const Vec<T>& g) {
  const int64_t H = a.s.H;
  const Vec<T> one(T(1));
  T* da = a.da + b * a.ld;  // [4H]
  const Vec<T> r = ld(da, j, n), z = ld(da, H + j, n);
  const Vec<T> nn = ld(da, 2 * H + j, n), hn = ld(da, 3 * H + j, n);
  const Vec<T> da_n = g * (one - z) * (one - nn * nn);
  st(da_n * hn * r * (one - r), da, j, n);
  st(g * (ld(a.h_prev + b * H, j, n) - nn) * z * (one - z), da, H + j, n);
  st(da_n, da, 2 * H + j, n);
  st(da_n * r, da, 3 * H + j, n);
  return g * z;
}

template <typename T>
inline void rnn_bwd_units(const BwdStep<T>& a, int64_t b, int64_t j, int64_t n, const Vec<T>& g,
                          bool relu) {
  const int64_t H = a.s.H;
  const Vec<T> h = ld(a.h_new + b * H, j, n), zero(T(0));
  st(relu ? Vec<T>::blendv(zero, g, h > zero) : g * (Vec<T>(T(1)) - h * h), a.da + b * a.ld, j, n);
}

// Fused backward (no projection, P == H): dh_in = dh + da_h[t+1] W_hh for the tile's units,
// then the gate gradients of this step from dh_in + dy.
template <typename T>
void bwd(int64_t mode, const BwdStep<T>& a, int64_t i0, int64_t i1) {
  constexpr int NV = kBwdUnitVecs;
  constexpr int64_t V = Vec<T>::size();
  const auto& s = a.s;
  const int64_t H = s.H;
  const bool relu = mode == kRNN_RELU;
  const int64_t seg_k[2] = {a.k1, a.k2};
  const auto row = [&](int seg, int64_t i) {
    return a.da_next + a.rows[i] * a.ld + (seg == 0 ? 0 : a.k2_off);
  };
  const auto after = [](int, int64_t, int, Vec<T> (&)[kTileRows][NV]) {};
  const auto epi = [&](int64_t q, int64_t i, int64_t, int64_t, const Vec<T>* acc) {
    const int64_t b = a.rows[i];
    T* dh_prev = a.dh_prev + b * H;
    for (int u = 0; u < NV; ++u) {
      const int64_t j = q * a.plan.units + u * V, n = std::min<int64_t>(V, H - j);
      if (n <= 0) break;
      // Every row here is active (a.rows); the driver carries the finished ones.
      const Vec<T> g = acc[u] + ld(a.dh + b * H, j, n) +
                       ld(a.dy + ((s.pos(b) - a.dy_pos0) * s.B + b) * H, j, n);
      if (mode == kLSTM) {
        lstm_bwd_units(a, b, j, n, g);
        st(Vec<T>(T(0)), dh_prev, j, n);
      } else if (mode == kGRU) {
        st(gru_bwd_units(a, b, j, n, g), dh_prev, j, n);
      } else {
        rnn_bwd_units(a, b, j, n, g, relu);
        st(Vec<T>(T(0)), dh_prev, j, n);
      }
      if (a.db) {  // the gradients just stored, from L1, into the bias sums
        for (int64_t slot = 0; slot < a.ld / H; ++slot) {
          T* db = a.db + (i / a.plan.rows) * a.ld + slot * H;
          st(ld(db, j, n) + ld(a.da + b * a.ld + slot * H, j, n), db, j, n);
        }
      }
    }
  };
  panel_tiles<T, NV, kTileRows>(a.plan, a.rows.n, i0, i1, a.w, 2, seg_k, row, after, epi);
}

// LSTM with a projection, rows [b0, b1): gate gradients from gy = (dh + dy) W_hr.
template <typename T>
void lstm_bwd_rows(const BwdStep<T>& a, int64_t b0, int64_t b1) {
  const auto& s = a.s;
  const int64_t H = s.H, P = s.P;
  for (int64_t b = b0; b < b1; ++b) {
    if (!s.active(b)) {
      zero_gate_grads(a, b, 0, H);
      copy_units(a.dh + b * P, a.dh_prev + b * P, P);  // dc stays as it is (in place)
      continue;
    }
    const T* gy = a.gy + b * H;  // [H]
    for_vec<T>(H, [&](int64_t j, int64_t n) { lstm_bwd_units(a, b, j, n, ld(gy, j, n)); });
    zero_units(a.dh_prev + b * P, P);
  }
}

template <typename T>
void proj_fwd_post(const ProjFwdPost<T>& a, int64_t b0, int64_t b1) {
  const auto& s = a.s;
  const int64_t P = s.P;
  for (int64_t b = b0; b < b1; ++b) {
    if (s.active(b)) {
      copy_units(a.h_new + b * P, a.y + (s.pos(b) * s.B + b) * P, P);
    } else {
      copy_units(a.h_prev + b * P, a.h_new + b * P, P);
      zero_units(a.y + (s.t * s.B + b) * P, P);
    }
  }
}

template <typename T>
void proj_bwd_pre(const ProjBwdPre<T>& a, int64_t b0, int64_t b1) {
  const auto& s = a.s;
  const int64_t P = s.P;
  for (int64_t b = b0; b < b1; ++b) {
    const T* dh = a.dh + b * P;  // [P]
    T* g = a.g + b * P;          // [P]
    T* gs = a.g_saved + b * P;   // [P]
    if (!s.active(b)) {
      copy_units(dh, g, P);
      zero_units(gs, P);
      continue;
    }
    const T* dy = a.dy + (s.pos(b) * s.B + b) * P;  // [P]
    for_vec<T>(P, [&](int64_t j, int64_t n) {
      const Vec<T> v = ld(dh, j, n) + ld(dy, j, n);
      st(v, g, j, n);
      st(v, gs, j, n);
    });
  }
}

template <typename T>
void rows_gemm(const RowsGemm<T>& g, int64_t i0, int64_t i1) {
  constexpr int NV = kBwdUnitVecs;
  constexpr int64_t V = Vec<T>::size();
  const int64_t seg_k[1] = {g.K};
  const auto row = [&](int, int64_t i) { return g.a + i * g.lda; };
  const auto after = [](int, int64_t, int, Vec<T> (&)[kTileRows][NV]) {};
  const auto epi = [&](int64_t q, int64_t i, int64_t, int64_t, const Vec<T>* acc) {
    T* out = g.out + (g.out_rows ? g.out_rows[i] : i) * g.N;
    for (int u = 0; u < NV; ++u) {
      const int64_t j = q * g.plan.units + u * V, n = std::min<int64_t>(V, g.N - j);
      if (n <= 0) break;
      st(acc[u], out, j, n);
    }
  };
  // [i0, i1): panels. A group of row blocks goes through every panel of the range while its
  // rows are in cache; the thread's panels stay in its L2 throughout.
  const int64_t rbn = g.plan.row_blocks;
  for (int64_t rb = 0; rb < rbn; rb += kGroupBlocks) {
    const int64_t rb1 = std::min<int64_t>(rbn, rb + kGroupBlocks);
    for (int64_t q = i0; q < i1; ++q) {
      panel_tiles<T, NV, kTileRows>(g.plan, g.R, q * rbn + rb, q * rbn + rb1, g.w, 1, seg_k, row,
                                    after, epi);
    }
  }
}

// acc[r][v] += sum_k a[k * lda + r] * b[k * ldb + v * V + (0..V-1)], the first n (<= NV * V)
// columns of b (the rest read as zeros).
template <typename T, int MR, int NV>
inline void tile_gemm_tn(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t K, int64_t n,
                         Vec<T> (&acc)[MR][NV]) {
  constexpr int64_t V = Vec<T>::size();
  const bool full = n == NV * V;
  for (int64_t k = 0; k < K; ++k) {
    const T* bk = b + k * ldb;
    const T* ak = a + k * lda;
    Vec<T> wv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const int64_t nv = std::max<int64_t>(0, std::min<int64_t>(V, n - v * V));
      wv[v] = full ? Vec<T>::loadu(bk + v * V) : nv ? ld(bk, v * V, nv) : Vec<T>(T(0));
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const Vec<T> ar(ak[r]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(ar, wv[v], acc[r][v]);
    }
  }
}

// Rows of b per chunk: a chunk of b ([256, N], 256 KiB at N = 256 floats) stays in L2 while
// every tile of the thread's rows of out passes over it.
constexpr int64_t kColsChunk = 256;
// Tiles of out rows that share a chunk of a's columns while it is in L1.
constexpr int64_t kColsBlock = 8;

template <typename T>
int64_t cols_gemm_rows() { return kTileRows; }

template <typename T>
void cols_gemm(const ColsGemm<T>& g, int64_t i0, int64_t i1) {
  constexpr int NV = kBwdUnitVecs, MR = kTileRows;
  constexpr int64_t V = Vec<T>::size(), NT = NV * V;
  for (int64_t k0 = 0; k0 < g.K; k0 += kColsChunk) {
    const int64_t kc = std::min(kColsChunk, g.K - k0);
    const bool first = k0 == 0 && !g.accumulate;
    for (int64_t mb = i0; mb < i1; mb += kColsBlock) {
      const int64_t mb1 = std::min(i1, mb + kColsBlock);
      for (int64_t n0 = 0; n0 < g.N; n0 += NT) {
        const int64_t n = std::min(NT, g.N - n0);
        for (int64_t i = mb; i < mb1; ++i) {
          const int64_t m0 = i * MR;
          with_rows<MR>(int(std::min<int64_t>(MR, g.M - m0)), [&](auto rows) {
            constexpr int M = decltype(rows)::value;
            T* o = g.out + m0 * g.ldo + n0;
            // Each chunk's sum starts at zero and is then added to out: blocked summation,
            // whose rounding grows with K / kColsChunk + kColsChunk terms, not with K
            // (T=256 B=128 GRU dW_ih vs fp64: 15x torch.nn's error when out seeded the
            // accumulators), for one add per accumulator per chunk.
            Vec<T> acc[M][NV];
#pragma GCC unroll 8
            for (int r = 0; r < M; ++r) {
#pragma GCC unroll 8
              for (int v = 0; v < NV; ++v) acc[r][v] = Vec<T>(T(0));
            }
            tile_gemm_tn<T, M, NV>(g.a + k0 * g.lda + m0, g.lda, g.b + k0 * g.ldb + n0, g.ldb,
                                   kc, n, acc);
#pragma GCC unroll 8
            for (int r = 0; r < M; ++r) {
#pragma GCC unroll 8
              for (int v = 0; v < NV; ++v) {
                const int64_t nv = std::max<int64_t>(0, std::min<int64_t>(V, n - v * V));
                if (!nv) continue;
                st(first ? acc[r][v] : acc[r][v] + ld(o + r * g.ldo, v * V, nv), o + r * g.ldo,
                   v * V, nv);
              }
            }
          });
        }
      }
    }
  }
}

// out[r, n] for W's rows [n0, n1): each W row streams once through MR row accumulators (two
// per row, for the adds' latency), which sum across their lanes at the row's end.
template <typename T, int MR>
void small_dot_rows(const SmallGemm<T>& g, int64_t n0, int64_t n1) {
  constexpr int64_t V = Vec<T>::size();
  const auto lanes_sum = [](const Vec<T>& v) {
    alignas(64) T lane[V];
    v.store(lane);
    T s = 0;
    for (int64_t i = 0; i < V; ++i) s += lane[i];
    return s;
  };
  for (int64_t n = n0; n < n1; ++n) {
    const T* w = g.w + n * g.ldw;
    Vec<T> acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = Vec<T>(T(0));
    int64_t k = 0;
    for (; k + 2 * V <= g.K; k += 2 * V) {
      const Vec<T> w0 = Vec<T>::loadu(w + k), w1 = Vec<T>::loadu(w + k + V);
      for (int r = 0; r < MR; ++r) {
        const T* a = g.a + r * g.lda + k;
        acc[r][0] = at::vec::fmadd(w0, Vec<T>::loadu(a), acc[r][0]);
        acc[r][1] = at::vec::fmadd(w1, Vec<T>::loadu(a + V), acc[r][1]);
      }
    }
    for (; k < g.K; k += V) {
      const int64_t m = std::min<int64_t>(V, g.K - k);
      const Vec<T> w0 = ld(w, k, m);
      for (int r = 0; r < MR; ++r) acc[r][0] = at::vec::fmadd(w0, ld(g.a + r * g.lda, k, m), acc[r][0]);
    }
    for (int r = 0; r < MR; ++r) {
      g.out[r * g.ldo + n] = lanes_sum(acc[r][0] + acc[r][1]);
    }
  }
}

// g's rows [r0, r0 + 4) at most, as a SmallGemm of their own.
template <typename T>
SmallGemm<T> row_group(const SmallGemm<T>& g, int64_t r0) {
  SmallGemm<T> part = g;
  part.a += r0 * g.lda;
  part.out += r0 * g.ldo;
  part.rows = std::min<int64_t>(4, g.rows - r0);
  return part;
}

// f(std::integral_constant<int, R>) for a group's R = rows (1-4) rows.
template <typename F>
inline void for_group_rows(int64_t rows, const F& f) {
  switch (rows) {
    case 1: return f(std::integral_constant<int, 1>());
    case 2: return f(std::integral_constant<int, 2>());
    case 3: return f(std::integral_constant<int, 3>());
    default: return f(std::integral_constant<int, 4>());
  }
}

// Bytes of W that the groups of 4 rows after the first find in L1 (dot) or L2 (axpy).
constexpr int64_t kSmallDotBlockBytes = int64_t(32) << 10;
constexpr int64_t kSmallAxpyBlockBytes = int64_t(512) << 10;

template <typename T>
void small_dot(const SmallGemm<T>& g, int64_t n0, int64_t n1) {
  const int64_t block = std::max<int64_t>(1, kSmallDotBlockBytes / int64_t(sizeof(T) * g.K));
  for (int64_t b0 = n0; b0 < n1; b0 += block) {
    const int64_t b1 = std::min(n1, b0 + block);
    for (int64_t r0 = 0; r0 < g.rows; r0 += 4) {
      const SmallGemm<T> part = row_group(g, r0);
      for_group_rows(part.rows, [&](auto R) { small_dot_rows<T, decltype(R)::value>(part, b0, b1); });
    }
  }
}

// out[r, k] for W's columns [k0, k1), in chunks of NV vectors: every W row's chunk is added,
// times a[r, n], into MR x NV accumulators that stay in registers through all N rows.
template <typename T, int MR>
void small_axpy_rows(const SmallGemm<T>& g, int64_t k0, int64_t k1) {
  constexpr int64_t V = Vec<T>::size();
  constexpr int NV = 16 / MR;
  for (int64_t c = k0; c < k1; c += NV * V) {
    const int64_t width = std::min<int64_t>(NV * V, k1 - c);
    Vec<T> acc[MR][NV];
    for (int r = 0; r < MR; ++r) {
      for (int v = 0; v < NV; ++v) acc[r][v] = Vec<T>(T(0));
    }
    for (int64_t n = 0; n < g.N; ++n) {
      const T* w = g.w + n * g.ldw + c;
      Vec<T> wv[NV];
      for (int v = 0; v < NV; ++v) {
        const int64_t m = std::max<int64_t>(0, std::min<int64_t>(V, width - v * V));
        wv[v] = m ? ld(w, v * V, m) : Vec<T>(T(0));
      }
      for (int r = 0; r < MR; ++r) {
        const Vec<T> ar(g.a[r * g.lda + n]);
        for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(ar, wv[v], acc[r][v]);
      }
    }
    for (int r = 0; r < MR; ++r) {
      T* o = g.out + r * g.ldo + c;
      for (int v = 0; v < NV; ++v) {
        const int64_t m = std::max<int64_t>(0, std::min<int64_t>(V, width - v * V));
        if (m) st(g.accumulate ? acc[r][v] + ld(o, v * V, m) : acc[r][v], o, v * V, m);
      }
    }
  }
}

template <typename T>
void small_axpy(const SmallGemm<T>& g, int64_t k0, int64_t k1) {
  constexpr int64_t V4 = 4 * Vec<T>::size();  // the columns of a group of 4 rows' chunk
  const int64_t block = std::max<int64_t>(
      1, kSmallAxpyBlockBytes / int64_t(sizeof(T) * std::max<int64_t>(1, g.N)) / V4) * V4;
  for (int64_t c0 = k0; c0 < k1; c0 += block) {
    const int64_t c1 = std::min(k1, c0 + block);
    for (int64_t r0 = 0; r0 < g.rows; r0 += 4) {
      const SmallGemm<T> part = row_group(g, r0);
      for_group_rows(part.rows, [&](auto R) { small_axpy_rows<T, decltype(R)::value>(part, c0, c1); });
    }
  }
}

#ifdef FUSED_RNN_BF16_PAIRS
// This file's one entry (cap_avx512bf16.cpp): the forward step over bf16 pairs.
void fwd_pairs(int64_t mode, const FwdStep<float>& a, int64_t i0, int64_t i1) {
  fwd<float, true>(mode, a, i0, i1);
}
#else
template <typename T>
const Kernels<T>& table() {
  static const Kernels<T> k{&fwd_plan<T>,      &bwd_plan<T>,      &fwd<T>,
                            &bwd<T>,           &lstm_bwd_rows<T>, &proj_fwd_post<T>,
                            &proj_bwd_pre<T>,  &rows_gemm<T>,      &cols_gemm<T>,
                            &cols_gemm_rows<T>, &small_dot<T>,     &small_axpy<T>};
  return k;
}

const Kernels<float>& kernels_f32() { return table<float>(); }
const Kernels<double>& kernels_f64() { return table<double>(); }
#endif  // FUSED_RNN_BF16_PAIRS

}  // namespace FUSED_RNN_CAP_NS
}  // namespace cpu
}  // namespace fused_rnn
