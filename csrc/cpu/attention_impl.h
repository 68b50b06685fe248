// The attention kernels of attention_kernels.h, compiled once per CPU capability: included
// by cap_*.cpp after kernels_impl.h, whose vector helpers (Vec, ld, st, for_vec, tanh_) it
// shares.
#pragma once

#include <cmath>
#include <limits>

#include "attention_kernels.h"

namespace fused_rnn {
namespace cpu {
namespace FUSED_RNN_CAP_NS {

template <typename T>
inline T hsum(const Vec<T>& x) {
  T lanes[Vec<T>::size()];
  x.store(lanes);
  T s = 0;
  for (int64_t l = 0; l < Vec<T>::size(); ++l) s += lanes[l];
  return s;
}

// The score of query row q [D] against key row k [D].
template <typename T>
inline T attn_score(const AttnArgs<T>& a, const T* q, const T* k) {
  Vec<T> acc(T(0));
  if (a.additive) {
    for_vec<T>(a.D, [&](int64_t j, int64_t n) {
      acc = at::vec::fmadd(ld(a.v, j, n), tanh_(ld(q, j, n) + ld(k, j, n)), acc);
    });
    return hsum(acc);
  }
  for_vec<T>(a.D, [&](int64_t j, int64_t n) { acc = at::vec::fmadd(ld(q, j, n), ld(k, j, n), acc); });
  return hsum(acc) * a.scale;
}

template <typename T>
inline T dot(const T* x, const T* y, int64_t n_all) {  // x, y: [n_all]
  Vec<T> acc(T(0));
  for_vec<T>(n_all, [&](int64_t j, int64_t n) { acc = at::vec::fmadd(ld(x, j, n), ld(y, j, n), acc); });
  return hsum(acc);
}

// y += alpha * x over [n_all].
template <typename T>
inline void axpy(T alpha, const T* x, T* y, int64_t n_all) {
  const Vec<T> s(alpha);
  for_vec<T>(n_all, [&](int64_t j, int64_t n) { st(at::vec::fmadd(s, ld(x, j, n), ld(y, j, n)), y, j, n); });
}

template <typename T>
void attn_fwd(const AttnFwd<T>& f, int64_t r0, int64_t r1, T* e) {
  const AttnArgs<T>& a = f.a;
  const T inf = std::numeric_limits<T>::infinity();
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / a.Tq;
    const T* q = a.q + r * a.D;  // [D]
    T* ctx = f.ctx + r * a.Dv;   // [Dv]
    T* w = f.weights ? f.weights + r * a.Tk : nullptr;  // [Tk]
    T m = -inf;
    bool any = false, nan = false;
    for (int64_t j = 0; j < a.Tk; ++j) {
      if (!a.valid(b, j)) continue;
      e[j] = attn_score(a, q, a.k + (b * a.Tk + j) * a.D);
      any = true;
      if (std::isnan(e[j])) nan = true;
      m = std::max(m, e[j]);
    }
    zero_units(ctx, a.Dv);
    if (w) zero_units(w, a.Tk);
    if (!any) {  // no valid key: zero weights and context, as the reference
      a.lse[r] = -inf;
      continue;
    }
    if (nan) m = std::numeric_limits<T>::quiet_NaN();  // a NaN score spoils its row, as amax does
    T s = 0;
    for (int64_t j = 0; j < a.Tk; ++j) {
      if (!a.valid(b, j)) continue;
      e[j] = std::exp(e[j] - m);
      s += e[j];
    }
    const T inv = T(1) / s;
    for (int64_t j = 0; j < a.Tk; ++j) {
      if (!a.valid(b, j)) continue;
      const T alpha = e[j] * inv;
      axpy(alpha, a.vals + (b * a.Tk + j) * a.Dv, ctx, a.Dv);
      if (w) w[j] = alpha;
    }
    a.lse[r] = m + std::log(s);
  }
}

template <typename T>
void attn_bwd(const AttnBwd<T>& g, int64_t b0, int64_t b1, T* sc, T* dv) {
  const AttnArgs<T>& a = g.a;
  const int64_t D = a.D, Dv = a.Dv, Tk = a.Tk;
  T* alpha = sc;      // [Tk]
  T* dalpha = sc + Tk;  // [Tk]
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t i = 0; i < a.Tq; ++i) {
      const int64_t r = b * a.Tq + i;
      const T lse = a.lse[r];
      if (std::isinf(lse) && lse < 0) continue;  // no valid key: weights are constant zero
      const T* q = a.q + r * D;          // [D]
      const T* dctx = g.dctx + r * Dv;   // [Dv]
      T* dq = g.dq + r * D;              // [D]
      T delta = 0;
      for (int64_t j = 0; j < Tk; ++j) {
        if (!a.valid(b, j)) continue;
        alpha[j] = std::exp(attn_score(a, q, a.k + (b * Tk + j) * D) - lse);
        dalpha[j] = dot(dctx, a.vals + (b * Tk + j) * Dv, Dv) +
                    (g.dweights ? g.dweights[r * Tk + j] : T(0));
        delta += alpha[j] * dalpha[j];
      }
      for (int64_t j = 0; j < Tk; ++j) {
        if (!a.valid(b, j)) continue;
        const T de = alpha[j] * (dalpha[j] - delta);
        const T* k = a.k + (b * Tk + j) * D;  // [D]
        T* dk = g.dk + (b * Tk + j) * D;      // [D]
        axpy(alpha[j], dctx, g.dvals + (b * Tk + j) * Dv, Dv);
        if (!a.additive) {
          axpy(de * a.scale, k, dq, D);
          axpy(de * a.scale, q, dk, D);
          continue;
        }
        const Vec<T> dev(de), one(T(1));
        for_vec<T>(D, [&](int64_t c, int64_t n) {
          const Vec<T> u = tanh_(ld(q, c, n) + ld(k, c, n));
          const Vec<T> dp = dev * ld(a.v, c, n) * (one - u * u);
          st(ld(dq, c, n) + dp, dq, c, n);
          st(ld(dk, c, n) + dp, dk, c, n);
          st(at::vec::fmadd(dev, u, ld(dv, c, n)), dv, c, n);
        });
      }
    }
  }
}

template <typename T>
const AttnKernels<T>& attn_table() {
  static const AttnKernels<T> k{&attn_fwd<T>, &attn_bwd<T>};
  return k;
}

const AttnKernels<float>& attn_kernels_f32() { return attn_table<float>(); }
const AttnKernels<double>& attn_kernels_f64() { return attn_table<double>(); }

}  // namespace FUSED_RNN_CAP_NS
}  // namespace cpu
}  // namespace fused_rnn
