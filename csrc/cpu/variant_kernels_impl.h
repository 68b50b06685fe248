// The row passes of variant_kernels.h, written with at::vec::Vectorized and compiled once per
// CPU capability beside kernels_impl.h (whose vector helpers they use): the including file
// defines FUSED_RNN_CAP_NS and the target first.
#pragma once

#include "kernels_impl.h"

#include <cmath>
#include <vector>

#include "variant_kernels.h"

namespace fused_rnn {
namespace cpu {
namespace FUSED_RNN_CAP_NS {

constexpr double kLnEps = 1e-5;  // layout.LN_EPS, as torch.nn.LayerNorm

// v with the lanes from n on zeroed: a partial vector's padding must not enter a sum.
template <typename T>
inline Vec<T> valid(const Vec<T>& v, int64_t n) {
  return n == Vec<T>::size() ? v : Vec<T>::set(Vec<T>(T(0)), v, n);
}

template <typename T>
inline T lane_sum(const Vec<T>& v) {  // lanes in order: the same result on every run
  T buf[Vec<T>::size()];
  v.store(buf);
  T s = 0;
  for (int64_t i = 0; i < Vec<T>::size(); ++i) s += buf[i];
  return s;
}

// Mean and 1/sigma of a row of n values, two passes (as torch's LayerNorm, no cancellation).
template <typename T>
inline void row_stats(const T* v, int64_t n, T& mean, T& rstd) {
  Vec<T> s(T(0));
  for_vec<T>(n, [&](int64_t j, int64_t m) { s = s + ld(v, j, m); });
  mean = lane_sum(s) / T(n);
  const Vec<T> mu(mean);
  Vec<T> q(T(0));
  for_vec<T>(n, [&](int64_t j, int64_t m) {
    const Vec<T> d = valid(ld(v, j, m) - mu, m);
    q = at::vec::fmadd(d, d, q);
  });
  rstd = T(1) / std::sqrt(lane_sum(q) / T(n) + T(kLnEps));
}

template <typename T>
void ln_rows(T* v, int64_t n, T* rstd, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    T* row = v + r * n;  // [n]
    T mean, rs;
    row_stats(row, n, mean, rs);
    const Vec<T> mu(mean), rv(rs);
    for_vec<T>(n, [&](int64_t j, int64_t m) { st((ld(row, j, m) - mu) * rv, row, j, m); });
    rstd[r] = rs;
  }
}

template <typename T>
void col_sum(const T* m, int64_t rows, int64_t cols, T* acc, int64_t c0, int64_t c1) {
  constexpr int64_t V = Vec<T>::size();
  for (int64_t j = c0; j < c1; j += V) {
    const int64_t n = std::min(V, c1 - j);
    Vec<T> s(T(0));
    for (int64_t r = 0; r < rows; ++r) s = s + ld(m + r * cols, j, n);
    st(ld(acc, j, n) + s, acc, j, n);
  }
}

// Zoneout: keep * prev + (1 - keep) * next, or next without keeps.
template <typename T>
inline Vec<T> zone(const T* keep, int64_t j, int64_t n, const Vec<T>& prev, const Vec<T>& next) {
  return keep ? next + ld(keep, j, n) * (prev - next) : next;
}

// Inactive row: the state stays, the output is zero; the slot [t, b] gets finite states (they
// meet zero gradients in the dW_hh GEMM).
template <typename T>
inline void fwd_inactive(const VariantFwd<T>& a, int64_t b) {
  const StepShape& s = a.w.s;
  const int64_t H = s.H, slot = s.t * s.B + b;
  zero_units(a.y + slot * H, H);
  if (a.h_save) copy_units(a.h + b * H, a.h_save + slot * H, H);
  if (a.c_save) copy_units(a.c + b * H, a.c_save + slot * H, H);
}

// ---------------------------------------------------------------- forward

template <typename T>
void lstm_fwd_rows(const VariantFwd<T>& a, int64_t b0, int64_t b1) {
  const VariantParams<T>& w = a.w;
  const StepShape& s = w.s;
  const int64_t H = s.H, GH = 4 * H;
  const Vec<T> one(T(1));
  std::vector<T> scratch(w.ln ? 2 * H : 0);  // LN: c~ and o of the row
  T* ct_s = scratch.data();
  T* o_s = ct_s + H;
  for (int64_t b = b0; b < b1; ++b) {
    if (!s.active(b)) {
      fwd_inactive(a, b);
      continue;
    }
    const int64_t slot = s.pos(b) * s.B + b;
    T* h = a.h + b * H;  // [H]
    T* c = a.c + b * H;  // [H]
    if (a.h_save) copy_units(h, a.h_save + slot * H, H);
    if (a.c_save) copy_units(c, a.c_save + slot * H, H);
    const T* kh = w.keep_h ? w.keep_h + slot * H : nullptr;
    const T* kc = w.keep_c ? w.keep_c + slot * H : nullptr;
    T* y = a.y + slot * H;
    T* p = a.p + slot * w.p_ld;   // [4H]
    const T* r = a.r + b * GH;    // [4H]
    if (!w.ln) {
      for_vec<T>(H, [&](int64_t j, int64_t n) {
        Vec<T> pre[4];
        for (int64_t q = 0; q < 4; ++q) {
          pre[q] = plus(ld(p, q * H + j, n) + ld(r, q * H + j, n), w.bias, q * H + j, n);
          if (a.save) st(pre[q], p, q * H + j, n);
        }
        const Vec<T> i = sigmoid(pre[0]), f = sigmoid(pre[1]), g = tanh_(pre[2]), o = sigmoid(pre[3]);
        const Vec<T> cv = ld(c, j, n), hv = ld(h, j, n);
        const Vec<T> ct = f * cv + i * g;
        const Vec<T> hn = zone(kh, j, n, hv, o * tanh_(ct));
        st(zone(kc, j, n, cv, ct), c, j, n);
        st(hn, h, j, n);
        st(hn, y, j, n);
      });
      continue;
    }
    T mean_r, rstd_r;
    row_stats(r, GH, mean_r, rstd_r);
    if (a.rstd_r) a.rstd_r[slot] = rstd_r;
    T* rn = a.rn ? a.rn + slot * GH : nullptr;
    const Vec<T> mr(mean_r), rr(rstd_r);
    Vec<T> csum(T(0));
    for_vec<T>(H, [&](int64_t j, int64_t n) {
      Vec<T> pre[4];
      for (int64_t q = 0; q < 4; ++q) {
        const int64_t k = q * H + j;
        const Vec<T> rnv = (ld(r, k, n) - mr) * rr;
        if (rn) st(rnv, rn, k, n);
        pre[q] = plus(ld(w.ln_ih, k, n) * ld(p, k, n) + ld(w.ln_hh, k, n) * rnv, w.bias, k, n);
      }
      const Vec<T> i = sigmoid(pre[0]), f = sigmoid(pre[1]), g = tanh_(pre[2]);
      const Vec<T> ct = f * ld(c, j, n) + i * g;
      st(ct, ct_s, j, n);
      st(sigmoid(pre[3]), o_s, j, n);
      csum = csum + valid(ct, n);
    });
    const T mean_c = lane_sum(csum) / T(H);
    const Vec<T> mc(mean_c);
    Vec<T> cq(T(0));
    for_vec<T>(H, [&](int64_t j, int64_t n) {
      const Vec<T> d = valid(ld(ct_s, j, n) - mc, n);
      cq = at::vec::fmadd(d, d, cq);
    });
    const Vec<T> rc(T(1) / std::sqrt(lane_sum(cq) / T(H) + T(kLnEps)));
    for_vec<T>(H, [&](int64_t j, int64_t n) {
      const Vec<T> ct = ld(ct_s, j, n);
      const Vec<T> u = ld(w.ln_cw, j, n) * ((ct - mc) * rc) + ld(w.ln_cb, j, n);
      const Vec<T> hn = zone(kh, j, n, ld(h, j, n), ld(o_s, j, n) * tanh_(u));
      st(zone(kc, j, n, ld(c, j, n), ct), c, j, n);
      st(hn, h, j, n);
      st(hn, y, j, n);
    });
  }
}

template <typename T>
void gru_fwd_rows(const VariantFwd<T>& a, int64_t b0, int64_t b1) {
  const VariantParams<T>& w = a.w;
  const StepShape& s = w.s;
  const int64_t H = s.H, GH = 3 * H;
  for (int64_t b = b0; b < b1; ++b) {
    if (!s.active(b)) {
      fwd_inactive(a, b);
      continue;
    }
    const int64_t slot = s.pos(b) * s.B + b;
    T* h = a.h + b * H;  // [H]
    if (a.h_save) copy_units(h, a.h_save + slot * H, H);
    const T* kh = w.keep_h ? w.keep_h + slot * H : nullptr;
    T* y = a.y + slot * H;
    T* p = a.p + slot * w.p_ld;  // [3H] (LN) or [4H]
    const T* r = a.r + b * GH;   // [3H]
    T mean_r = 0, rstd_r = 1;
    if (w.ln) {
      row_stats(r, GH, mean_r, rstd_r);
      if (a.rstd_r) a.rstd_r[slot] = rstd_r;
    }
    T* rn = w.ln && a.rn ? a.rn + slot * GH : nullptr;
    const Vec<T> mr(mean_r), rr(rstd_r);
    for_vec<T>(H, [&](int64_t j, int64_t n) {
      Vec<T> xi[3], hi[3];  // input and hidden parts of r, z, n (hidden n with b_hn)
      for (int64_t q = 0; q < 3; ++q) {
        const int64_t k = q * H + j;
        if (w.ln) {
          const Vec<T> rnv = (ld(r, k, n) - mr) * rr;
          if (rn) st(rnv, rn, k, n);
          xi[q] = plus(ld(w.ln_ih, k, n) * ld(p, k, n), w.bias, k, n);
          hi[q] = ld(w.ln_hh, k, n) * rnv;
        } else {
          xi[q] = plus(ld(p, k, n), w.bias, k, n);
          hi[q] = ld(r, k, n);
        }
      }
      hi[2] = plus(hi[2], w.b_hn, j, n);
      const Vec<T> ar = xi[0] + hi[0], az = xi[1] + hi[1];
      if (a.save && !w.ln) {
        st(ar, p, j, n);
        st(az, p, H + j, n);
        st(xi[2], p, 2 * H + j, n);
        st(hi[2], p, 3 * H + j, n);
      }
      const Vec<T> rg = sigmoid(ar), z = sigmoid(az);
      const Vec<T> nn = tanh_(xi[2] + rg * hi[2]);
      const Vec<T> hv = ld(h, j, n);
      const Vec<T> hn = zone(kh, j, n, hv, nn + z * (hv - nn));
      st(hn, h, j, n);
      st(hn, y, j, n);
    });
  }
}

template <typename T>
void fwd_rows(const VariantFwd<T>& a, int64_t b0, int64_t b1) {
  if (a.w.lstm) {
    lstm_fwd_rows(a, b0, b1);
  } else {
    gru_fwd_rows(a, b0, b1);
  }
}

// ---------------------------------------------------------------- backward

// Inactive row: no gradients in its slot or for W_hh; dh and dc pass through unchanged.
template <typename T>
inline void bwd_inactive(const VariantBwd<T>& a, int64_t b) {
  const VariantParams<T>& w = a.w;
  const StepShape& s = w.s;
  const int64_t H = s.H, GH = (w.lstm ? 4 : 3) * H, slot = s.t * s.B + b;
  zero_units(a.p + slot * w.p_ld, w.p_ld);
  if (w.ln) zero_units(a.rn + slot * GH, GH);
  zero_units(a.dr + b * GH, GH);
  zero_units(a.red + b * reduce_count(w.lstm, w.ln, H), reduce_count(w.lstm, w.ln, H));
}

template <typename T>
inline const T* state_before(const VariantBwd<T>& a, int64_t slot_p, int64_t b) {
  const StepShape& s = a.w.s;
  const int64_t q = slot_p + a.hs_shift;
  return q >= 0 && q < s.T ? a.hs + (q * s.B + b) * s.H : a.h0 + b * s.H;
}

// LN backward of the input and the recurrent row, given their upstream gradients
// gP = da_in * ln_ih, gR = da_hid * ln_hh (in `da_in`/`da_hid` [GH] times the gains) and the
// sums m* = sum(g), q* = sum(g * v~): dv = rstd * (g - mean(g) - v~ * mean(g * v~)).
template <typename T>
inline void ln_rows_bwd(const VariantBwd<T>& a, int64_t b, int64_t slot, const T* da_in,
                        const T* da_hid, int64_t GH, T mP, T qP, T mR, T qR) {
  const VariantParams<T>& w = a.w;
  T* p = a.p + slot * w.p_ld;  // [GH] in: P~, out: dP
  T* rn = a.rn + slot * GH;    // [GH] in: R~, out: dR
  T* dr = a.dr + b * GH;       // [GH]
  const Vec<T> rp(a.rstd_p[slot]), rr(a.rstd_r[slot]);
  const Vec<T> mp(mP / T(GH)), qp(qP / T(GH)), mh(mR / T(GH)), qh(qR / T(GH));
  for_vec<T>(GH, [&](int64_t k, int64_t n) {
    const Vec<T> gp = ld(da_in, k, n) * ld(w.ln_ih, k, n);
    const Vec<T> gr = ld(da_hid, k, n) * ld(w.ln_hh, k, n);
    st(rp * (gp - mp - ld(p, k, n) * qp), p, k, n);
    const Vec<T> dR = rr * (gr - mh - ld(rn, k, n) * qh);
    st(dR, rn, k, n);
    st(dR, dr, k, n);
  });
}

template <typename T>
void lstm_bwd_rows(const VariantBwd<T>& a, int64_t b0, int64_t b1) {
  const VariantParams<T>& w = a.w;
  const StepShape& s = w.s;
  const int64_t H = s.H, GH = 4 * H;
  const Vec<T> one(T(1));
  std::vector<T> scratch(w.ln ? 7 * H : 0);  // LN: gates, then da [4H]; c~, then LN(c~); dLN(c~)
  T* g4 = scratch.data();
  T* cn_s = g4 + GH;
  T* dcn_s = cn_s + H;
  for (int64_t b = b0; b < b1; ++b) {
    if (!s.active(b)) {
      bwd_inactive(a, b);
      continue;
    }
    const int64_t slot = s.pos(b) * s.B + b;
    T* dh = a.dh + b * H;  // [H]
    T* dc = a.dc + b * H;  // [H]
    const T* dy = a.dy + slot * H;
    const T* c = a.c_save + slot * H;
    const T* kh = w.keep_h ? w.keep_h + slot * H : nullptr;
    const T* kc = w.keep_c ? w.keep_c + slot * H : nullptr;
    T* p = a.p + slot * w.p_ld;  // [4H]
    T* dr = a.dr + b * GH;       // [4H]
    T* red = a.red + b * reduce_count(true, w.ln, H);
    if (!w.ln) {
      for_vec<T>(H, [&](int64_t j, int64_t n) {
        const Vec<T> i = sigmoid(ld(p, j, n)), f = sigmoid(ld(p, H + j, n));
        const Vec<T> g = tanh_(ld(p, 2 * H + j, n)), o = sigmoid(ld(p, 3 * H + j, n));
        const Vec<T> cv = ld(c, j, n);
        const Vec<T> ct = f * cv + i * g;
        const Vec<T> tc = tanh_(ct);
        const Vec<T> dhv = ld(dh, j, n) + ld(dy, j, n), dcv = ld(dc, j, n);
        const Vec<T> dht = kh ? (one - ld(kh, j, n)) * dhv : dhv;
        const Vec<T> dct = dht * o * (one - tc * tc) + (kc ? (one - ld(kc, j, n)) * dcv : dcv);
        st(kh ? ld(kh, j, n) * dhv : Vec<T>(T(0)), dh, j, n);
        st(kc ? dct * f + ld(kc, j, n) * dcv : dct * f, dc, j, n);
        const Vec<T> da[4] = {dct * g * i * (one - i), dct * cv * f * (one - f),
                              dct * i * (one - g * g), dht * tc * o * (one - o)};
        for (int64_t q = 0; q < 4; ++q) {
          st(da[q], p, q * H + j, n);
          st(da[q], dr, q * H + j, n);
          st(da[q], red, q * H + j, n);
        }
      });
      continue;
    }
    T* rn = a.rn + slot * GH;  // [4H]
    // Gates and c~ again, then the statistics of c~.
    Vec<T> csum(T(0));
    for_vec<T>(H, [&](int64_t j, int64_t n) {
      Vec<T> pre[4];
      for (int64_t q = 0; q < 4; ++q) {
        const int64_t k = q * H + j;
        pre[q] = plus(ld(w.ln_ih, k, n) * ld(p, k, n) + ld(w.ln_hh, k, n) * ld(rn, k, n), w.bias, k, n);
      }
      const Vec<T> i = sigmoid(pre[0]), f = sigmoid(pre[1]), g = tanh_(pre[2]), o = sigmoid(pre[3]);
      store_slots(g4, H, j, n, i, f, g, o);
      const Vec<T> ct = f * ld(c, j, n) + i * g;
      st(ct, cn_s, j, n);
      csum = csum + valid(ct, n);
    });
    const Vec<T> mc(lane_sum(csum) / T(H));
    Vec<T> cq(T(0));
    for_vec<T>(H, [&](int64_t j, int64_t n) {
      const Vec<T> d = valid(ld(cn_s, j, n) - mc, n);
      cq = at::vec::fmadd(d, d, cq);
    });
    const T rstd_c = T(1) / std::sqrt(lane_sum(cq) / T(H) + T(kLnEps));
    const Vec<T> rc(rstd_c);
    // h~ = o * tanh(u), u = ln_cw * LN(c~) + ln_cb: da_o, du, and dLN(c~) with its sums.
    Vec<T> m1(T(0)), m2(T(0));
    for_vec<T>(H, [&](int64_t j, int64_t n) {
      const Vec<T> cn = (ld(cn_s, j, n) - mc) * rc;
      const Vec<T> cw = ld(w.ln_cw, j, n);
      const Vec<T> tu = tanh_(cw * cn + ld(w.ln_cb, j, n));
      const Vec<T> dhv = ld(dh, j, n) + ld(dy, j, n);
      const Vec<T> dht = kh ? (one - ld(kh, j, n)) * dhv : dhv;
      st(kh ? ld(kh, j, n) * dhv : Vec<T>(T(0)), dh, j, n);
      const Vec<T> o = ld(g4, 3 * H + j, n);
      const Vec<T> du = dht * o * (one - tu * tu);
      st(dht * tu * o * (one - o), g4, 3 * H + j, n);  // da_o
      st(du * cn, red, 12 * H + j, n);
      st(du, red, 13 * H + j, n);
      const Vec<T> dcn = du * cw;
      st(cn, cn_s, j, n);
      st(dcn, dcn_s, j, n);
      m1 = m1 + valid(dcn, n);
      m2 = at::vec::fmadd(valid(dcn, n), cn, m2);
    });
    const Vec<T> mm1(lane_sum(m1) / T(H)), mm2(lane_sum(m2) / T(H));
    // dc~, the other gate gradients, dc; the sums of the two row LN backwards.
    Vec<T> sp(T(0)), qp(T(0)), sr(T(0)), qr(T(0));
    for_vec<T>(H, [&](int64_t j, int64_t n) {
      const Vec<T> cn = ld(cn_s, j, n);
      const Vec<T> dcv = ld(dc, j, n);
      const Vec<T> dct = rc * (ld(dcn_s, j, n) - mm1 - cn * mm2) +
                         (kc ? (one - ld(kc, j, n)) * dcv : dcv);
      const Vec<T> i = ld(g4, j, n), f = ld(g4, H + j, n), g = ld(g4, 2 * H + j, n);
      st(kc ? dct * f + ld(kc, j, n) * dcv : dct * f, dc, j, n);
      const Vec<T> da[4] = {dct * g * i * (one - i), dct * ld(c, j, n) * f * (one - f),
                            dct * i * (one - g * g), ld(g4, 3 * H + j, n)};
      for (int64_t q = 0; q < 4; ++q) {
        const int64_t k = q * H + j;
        const Vec<T> pv = ld(p, k, n), rv = ld(rn, k, n), d = valid(da[q], n);
        st(da[q], g4, k, n);
        st(da[q], red, k, n);
        st(da[q] * pv, red, GH + k, n);
        st(da[q] * rv, red, 2 * GH + k, n);
        const Vec<T> gp = d * ld(w.ln_ih, k, n), gr = d * ld(w.ln_hh, k, n);
        sp = sp + gp;
        qp = at::vec::fmadd(gp, pv, qp);
        sr = sr + gr;
        qr = at::vec::fmadd(gr, rv, qr);
      }
    });
    ln_rows_bwd(a, b, slot, g4, g4, GH, lane_sum(sp), lane_sum(qp), lane_sum(sr), lane_sum(qr));
  }
}

template <typename T>
void gru_bwd_rows(const VariantBwd<T>& a, int64_t b0, int64_t b1) {
  const VariantParams<T>& w = a.w;
  const StepShape& s = w.s;
  const int64_t H = s.H, GH = 3 * H;
  const Vec<T> one(T(1));
  std::vector<T> scratch(w.ln ? 4 * H : 0);  // LN: [da_r, da_z, da_n, da_n*r]
  T* d4 = scratch.data();
  for (int64_t b = b0; b < b1; ++b) {
    if (!s.active(b)) {
      bwd_inactive(a, b);
      continue;
    }
    const int64_t slot = s.pos(b) * s.B + b;
    T* dh = a.dh + b * H;  // [H]
    const T* dy = a.dy + slot * H;
    const T* h = state_before(a, slot / s.B, b);
    const T* kh = w.keep_h ? w.keep_h + slot * H : nullptr;
    T* p = a.p + slot * w.p_ld;  // [3H] (LN) or [4H]
    T* dr = a.dr + b * GH;       // [3H]
    T* red = a.red + b * reduce_count(false, w.ln, H);
    T* rn = w.ln ? a.rn + slot * GH : nullptr;  // [3H]
    Vec<T> sp(T(0)), qp(T(0)), sr(T(0)), qr(T(0));
    for_vec<T>(H, [&](int64_t j, int64_t n) {
      Vec<T> ar, az, xn, hn;
      if (w.ln) {
        Vec<T> xi[3], hi[3];
        for (int64_t q = 0; q < 3; ++q) {
          const int64_t k = q * H + j;
          xi[q] = plus(ld(w.ln_ih, k, n) * ld(p, k, n), w.bias, k, n);
          hi[q] = ld(w.ln_hh, k, n) * ld(rn, k, n);
        }
        ar = xi[0] + hi[0];
        az = xi[1] + hi[1];
        xn = xi[2];
        hn = plus(hi[2], w.b_hn, j, n);
      } else {
        ar = ld(p, j, n);
        az = ld(p, H + j, n);
        xn = ld(p, 2 * H + j, n);
        hn = ld(p, 3 * H + j, n);
      }
      const Vec<T> rg = sigmoid(ar), z = sigmoid(az), nn = tanh_(xn + rg * hn);
      const Vec<T> dhv = ld(dh, j, n) + ld(dy, j, n);
      const Vec<T> dht = kh ? (one - ld(kh, j, n)) * dhv : dhv;
      st(kh ? ld(kh, j, n) * dhv + dht * z : dht * z, dh, j, n);
      const Vec<T> dan = dht * (one - z) * (one - nn * nn);
      const Vec<T> d[4] = {dan * hn * rg * (one - rg), dht * (ld(h, j, n) - nn) * z * (one - z),
                           dan, dan * rg};
      for (int64_t q = 0; q < 4; ++q) st(d[q], red, q * H + j, n);
      if (!w.ln) {
        for (int64_t q = 0; q < 4; ++q) st(d[q], p, q * H + j, n);
        st(d[0], dr, j, n);
        st(d[1], dr, H + j, n);
        st(d[3], dr, 2 * H + j, n);
        return;
      }
      for (int64_t q = 0; q < 4; ++q) st(d[q], d4, q * H + j, n);
      for (int64_t q = 0; q < 3; ++q) {
        const int64_t k = q * H + j;
        const Vec<T> di = valid(d[q], n), dhd = valid(q == 2 ? d[3] : d[q], n);
        const Vec<T> pv = ld(p, k, n), rv = ld(rn, k, n);
        st(di * pv, red, 4 * H + k, n);
        st(dhd * rv, red, 7 * H + k, n);
        const Vec<T> gp = di * ld(w.ln_ih, k, n), gr = dhd * ld(w.ln_hh, k, n);
        sp = sp + gp;
        qp = at::vec::fmadd(gp, pv, qp);
        sr = sr + gr;
        qr = at::vec::fmadd(gr, rv, qr);
      }
    });
    if (!w.ln) continue;
    // The hidden side [da_r, da_z, da_n*r] is d4 without its third block: move it down.
    std::memcpy(d4 + 2 * H, d4 + 3 * H, sizeof(T) * H);
    // The input side [da_r, da_z, da_n] is the first 3H of this row's reduction terms.
    ln_rows_bwd(a, b, slot, red, d4, GH, lane_sum(sp), lane_sum(qp), lane_sum(sr), lane_sum(qr));
  }
}

template <typename T>
void bwd_rows(const VariantBwd<T>& a, int64_t b0, int64_t b1) {
  if (a.w.lstm) {
    lstm_bwd_rows(a, b0, b1);
  } else {
    gru_bwd_rows(a, b0, b1);
  }
}

template <typename T>
const VariantKernels<T>& variant_table() {
  static const VariantKernels<T> k{&ln_rows<T>, &fwd_rows<T>, &bwd_rows<T>, &col_sum<T>};
  return k;
}

const VariantKernels<float>& variant_kernels_f32() { return variant_table<float>(); }
const VariantKernels<double>& variant_kernels_f64() { return variant_table<double>(); }

}  // namespace FUSED_RNN_CAP_NS
}  // namespace cpu
}  // namespace fused_rnn
