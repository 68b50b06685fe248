// Host check of csrc/include/fused_rnn/recurrence_step.cuh: the per-element step functions the
// CUDA kernels call, driven over every (row, unit) on the CPU by the time loop the binding is
// to run (recurrence_step.cuh's header comment), with naive GEMMs. Built with a plain C++
// compiler (no CUDA needed) by tests/test_cuda_kernels_compile.py, which compares the results
// with fused_rnn.ops.recurrence.reference in float64 and float32.
//
// stdin, little endian: int64 header [mode, dtype, steps, B, I, H, P, reverse, has_lengths,
// has_bias], then int64 lengths [B] if has_lengths, then float64 arrays:
//   x [steps, B, I], h0 [B, P], c0 [B, H] (LSTM), w_ih [G*H, I], w_hh [G*H, P],
//   b_ih [G*H], b_hh [G*H] (has_bias), w_hr [P, H] (P != H), dy [steps, B, P], dh_n [B, P],
//   dc_n [B, H] (LSTM).
// stdout: float64 arrays y [steps, B, P], h_n [B, P], c_n [B, H] (LSTM), dx [steps, B, I],
//   dh0 [B, P], dc0 [B, H] (LSTM), dw_ih, dw_hh, db_ih, db_hh (has_bias), dw_hr (P != H).
// dtype: 0 float, 1 double (storage T = accumulation A), and, built by nvcc (-x cu, host code
// only), 2 __half, 3 __nv_bfloat16 (A = float): as the kernels, GEMM outputs are rounded to T;
// the GEMMs here accumulate in double.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "fused_rnn/recurrence_step.cuh"

using namespace fused_rnn::cuda;

namespace {

std::vector<double> read_doubles(size_t n) {
  std::vector<double> v(n);
  if (n && std::fread(v.data(), sizeof(double), n, stdin) != n) {
    std::fprintf(stderr, "short input\n");
    std::exit(2);
  }
  return v;
}

template <typename T>
T cast(double v) {
  T out;
  put(&out, decltype(to_acc(out))(v));
  return out;
}

template <typename T>
std::vector<T> read_as(size_t n) {
  const std::vector<double> d = read_doubles(n);
  std::vector<T> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = cast<T>(d[i]);
  return out;
}

template <typename T>
void write(const std::vector<T>& v) {
  std::vector<double> d(v.size());
  for (size_t i = 0; i < v.size(); ++i) d[i] = double(to_acc(v[i]));
  std::fwrite(d.data(), sizeof(double), d.size(), stdout);
}

// c[m, n] (+)= sum_k a[m, k] b'[k, n], where b' = b^T (b [n, k]) if bt else b ([k, n]).
// a: [m, k] with row stride lda.
template <typename T, typename TA, typename TC>
void gemm(int64_t m, int64_t n, int64_t k, const TA* a, int64_t lda, const T* b, bool bt, TC* c,
          bool accumulate) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = accumulate ? double(to_acc(c[i * n + j])) : 0.0;
      for (int64_t q = 0; q < k; ++q) {
        acc += double(to_acc(a[i * lda + q])) * double(to_acc(bt ? b[j * k + q] : b[q * n + j]));
      }
      c[i * n + j] = cast<TC>(acc);
    }
  }
}

template <typename T, typename A>
int run(const int64_t* hd) {
  const int mode = int(hd[0]);
  const int64_t steps = hd[2], B = hd[3], I = hd[4], H = hd[5], P = hd[6];
  const bool reverse = hd[7] != 0, has_lengths = hd[8] != 0, has_bias = hd[9] != 0;
  const bool lstm = mode == kLSTM, gru = mode == kGRU, proj = P != H;
  const int64_t G = gate_count(mode), GH = G * H;
  std::vector<int64_t> lengths(B, steps);
  if (has_lengths && std::fread(lengths.data(), sizeof(int64_t), B, stdin) != size_t(B)) return 2;
  const auto x = read_as<T>(steps * B * I), h0 = read_as<T>(B * P);
  const auto c0 = read_as<A>(lstm ? B * H : 0);
  const auto w_ih = read_as<T>(GH * I), w_hh = read_as<T>(GH * P);
  const auto b_ih = read_as<T>(has_bias ? GH : 0), b_hh = read_as<T>(has_bias ? GH : 0);
  const auto w_hr = read_as<T>(proj ? P * H : 0);
  const auto dy = read_as<T>(steps * B * P);
  const auto dh_n = read_as<A>(B * P);
  const auto dc_n = read_as<A>(lstm ? B * H : 0);

  StepShape s{steps, B, H, P, 0, reverse, has_lengths ? lengths.data() : nullptr};

  // ---- forward
  std::vector<T> gx(steps * B * GH), gh(B * GH), y(steps * B * P, cast<T>(-7777));  // poisoned
  std::vector<T> hs((steps + 1) * B * P), acts(lstm || gru ? steps * B * 4 * H : 0);
  std::vector<T> hpre(proj ? steps * B * H : 0);  // o tanh(c') per step, the W_hr GEMM's input
  std::vector<A> cs(lstm ? (steps + 1) * B * H : 0);
  gemm(steps * B, GH, I, x.data(), I, w_ih.data(), true, gx.data(), false);
  std::copy(h0.begin(), h0.end(), hs.begin());
  std::copy(c0.begin(), c0.end(), cs.begin());
  for (int64_t t = 0; t < steps; ++t) {
    s.t = t;
    T* h_prev = hs.data() + t * B * P;
    T* h_next = hs.data() + (t + 1) * B * P;
    gemm(B, GH, P, h_prev, P, w_hh.data(), true, gh.data(), false);
    FwdStepArgs<T, A> a{};
    a.s = s;
    a.gx = gx.data();
    a.gh = gh.data();
    a.b_ih = has_bias ? b_ih.data() : nullptr;
    a.b_hh = has_bias ? b_hh.data() : nullptr;
    a.h_prev = h_prev;
    a.h_new = proj ? hpre.data() + t * B * H : h_next;
    a.c_prev = lstm ? cs.data() + t * B * H : nullptr;
    a.c_new = lstm ? cs.data() + (t + 1) * B * H : nullptr;
    a.y = proj ? nullptr : y.data();
    a.acts = acts.empty() ? nullptr : acts.data() + t * B * 4 * H;
    a.proj = proj;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < H; ++j) {
        with_mode(mode, [&](auto m) { fwd_point<decltype(m)::value>(a, b, j); });
      }
    }
    if (proj) {
      gemm(B, P, H, a.h_new, H, w_hr.data(), true, h_next, false);
      ProjFwdPostArgs<T> p{s, h_prev, h_next, y.data()};
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < P; ++j) proj_fwd_post_point(p, b, j);
      }
    }
  }

  // ---- backward
  std::vector<A> dh(dh_n), dc(dc_n);
  std::vector<T> dh_rec(B * P), gy(proj ? B * H : 0);
  std::vector<T> da(steps * B * GH, cast<T>(-7777)), dah(gru ? steps * B * GH : 0, cast<T>(-7777));
  std::vector<T> gs(proj ? steps * B * P : 0);
  T* da_h_all = gru ? dah.data() : da.data();  // LSTM, RNN: the hidden side is da
  for (int64_t t = steps - 1; t >= 0; --t) {
    s.t = t;
    const bool last = t == steps - 1;
    if (!last) gemm(B, P, GH, da_h_all + (t + 1) * B * GH, GH, w_hh.data(), false, dh_rec.data(), false);
    BwdStepArgs<T, A> a{};
    a.s = s;
    a.dy = dy.data();
    a.dh_rec = last || proj ? nullptr : dh_rec.data();
    a.dh = dh.data();
    a.dc = lstm ? dc.data() : nullptr;
    if (proj) {
      ProjBwdPreArgs<T, A> p{s, dy.data(), last ? nullptr : dh_rec.data(), dh.data(),
                             gs.data() + t * B * P};
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < P; ++j) proj_bwd_pre_point(p, b, j);
      }
      gemm(B, H, P, p.g, P, w_hr.data(), false, gy.data(), false);
      a.gy = gy.data();
    }
    a.acts = acts.empty() ? nullptr : acts.data() + t * B * 4 * H;
    a.c_prev = lstm ? cs.data() + t * B * H : nullptr;
    a.c_new = lstm ? cs.data() + (t + 1) * B * H : nullptr;
    a.h_prev = hs.data() + t * B * P;
    a.h_new = hs.data() + (t + 1) * B * P;
    // LSTM: in place over the saved activations, as the binding may do.
    a.da = lstm ? const_cast<T*>(a.acts) : da.data() + t * B * GH;
    a.da_h = gru ? dah.data() + t * B * GH : nullptr;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < H; ++j) {
        with_mode(mode, [&](auto m) { bwd_point<decltype(m)::value>(a, b, j); });
      }
    }
    if (lstm) std::copy(acts.begin() + t * B * GH, acts.begin() + (t + 1) * B * GH, da.begin() + t * B * GH);
  }
  // dh0 = dh + da_h[0] W_hh
  gemm(B, P, GH, da_h_all, GH, w_hh.data(), false, dh.data(), true);

  // ---- after the loop: dx (natural order), weight gradients
  std::vector<T> dx(steps * B * I), xl(steps * B * I);  // xl: x in loop order
  for (int64_t t = 0; t < steps; ++t) {
    s.t = t;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t p = s.pos(b);
      gemm(1, I, GH, da.data() + (t * B + b) * GH, GH, w_ih.data(), false, dx.data() + (p * B + b) * I, false);
      std::copy(x.begin() + (p * B + b) * I, x.begin() + (p * B + b + 1) * I, xl.begin() + (t * B + b) * I);
    }
  }
  // dW = da^T @ operand: transposes as explicit loops.
  auto wgrad = [](int64_t rows, int64_t n, int64_t k, const T* d, const T* v) {  // d [rows, n], v [rows, k]
    std::vector<T> out(n * k);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t q = 0; q < k; ++q) {
        double acc = 0;
        for (int64_t r = 0; r < rows; ++r) acc += double(to_acc(d[r * n + i])) * double(to_acc(v[r * k + q]));
        out[i * k + q] = cast<T>(acc);
      }
    }
    return out;
  };
  auto colsum = [](int64_t rows, int64_t n, const T* d) {
    std::vector<T> out(n);
    for (int64_t i = 0; i < n; ++i) {
      double acc = 0;
      for (int64_t r = 0; r < rows; ++r) acc += double(to_acc(d[r * n + i]));
      out[i] = cast<T>(acc);
    }
    return out;
  };
  const int64_t R = steps * B;
  const auto dw_ih = wgrad(R, GH, I, da.data(), xl.data());
  const auto dw_hh = wgrad(R, GH, P, da_h_all, hs.data());

  write(y);
  write(std::vector<T>(hs.end() - B * P, hs.end()));
  if (lstm) write(std::vector<A>(cs.end() - B * H, cs.end()));
  write(dx);
  write(dh);
  if (lstm) write(dc);
  write(dw_ih);
  write(dw_hh);
  if (has_bias) {
    write(colsum(R, GH, da.data()));
    write(colsum(R, GH, da_h_all));
  }
  if (proj) write(wgrad(R, P, H, gs.data(), hpre.data()));
  return 0;
}

}  // namespace

int main() {
  int64_t hd[10];
  if (std::fread(hd, sizeof(int64_t), 10, stdin) != 10) return 2;
  switch (hd[1]) {
    case 0: return run<float, float>(hd);
    case 1: return run<double, double>(hd);
#if defined(__CUDACC__)
    case 2: return run<__half, float>(hd);
    case 3: return run<__nv_bfloat16, float>(hd);
#endif
    default: std::fprintf(stderr, "dtype %lld not built\n", (long long)hd[1]); return 3;
  }
}
