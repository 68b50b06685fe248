// The per-element gate math of the recurrence (../../../MATH.md's equations), forward and
// backward for LSTM, GRU and RNN tanh/relu, as inline functions callable from device and host
// code. No torch, no CUDA runtime: under nvcc they are __host__ __device__; under a plain C++
// compiler they are ordinary inline functions, which is how tests/test_cuda_kernels_compile.py
// checks them on a machine without a GPU.
//
// A is the accumulation type: float in the CUDA kernels (whatever the storage type), double
// too in the host check. Every function takes and returns values, never pointers.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define FUSED_RNN_HD __host__ __device__ __forceinline__
#else
#define FUSED_RNN_HD inline
#endif

namespace fused_rnn {
namespace cuda {

// exp and tanh of the accumulation type. tanh is built on exp: under --use_fast_math (the
// extension's nvcc flags) tanhf becomes tanh.approx.f32 (relative error ~2^-11, far outside
// fp32's tolerance), while expf becomes ex2.approx (relative error ~2^-22). The form
// sign(x) (1 - e) / (1 + e), e = exp(-2|x|) <= 1, never overflows; its absolute error is a
// few 1e-8, as the cpu backend's.
FUSED_RNN_HD float exp_(float x) { return expf(x); }
FUSED_RNN_HD double exp_(double x) { return exp(x); }
FUSED_RNN_HD float log_(float x) { return logf(x); }
FUSED_RNN_HD double log_(double x) { return log(x); }

template <typename A>
FUSED_RNN_HD A tanh_(A x) {
  const A e = exp_(A(-2) * (x < A(0) ? -x : x));
  const A t = (A(1) - e) / (A(1) + e);
  return x < A(0) ? -t : t;
}

// 1 / (1 + exp(-x)): exp(-x) may be inf (x < -88 in float), which gives the exact 0.
template <typename A>
FUSED_RNN_HD A sigmoid_(A x) {
  return A(1) / (A(1) + exp_(-x));
}

// ---------------------------------------------------------------- LSTM (gates i, f, g, o)

template <typename A>
struct LstmFwd {
  A i, f, g, o;  // activations, saved for backward
  A c;           // c' = f c + i g
  A h;           // o tanh(c') (the state, or the input of the projection)
};

// a_*: the gate pre-activations with both biases; c: the cell before the step.
template <typename A>
FUSED_RNN_HD LstmFwd<A> lstm_fwd(A a_i, A a_f, A a_g, A a_o, A c) {
  LstmFwd<A> r;
  r.i = sigmoid_(a_i);
  r.f = sigmoid_(a_f);
  r.g = tanh_(a_g);
  r.o = sigmoid_(a_o);
  r.c = r.f * c + r.i * r.g;
  r.h = r.o * tanh_(r.c);
  return r;
}

template <typename A>
struct LstmBwd {
  A da_i, da_f, da_g, da_o;  // gate pre-activation gradients (input and hidden side alike)
  A dc_prev;                 // dL/dc of the cell before the step
};

// dy: dL/d(o tanh(c')) (dh' without a projection, W_hr^T dh' with one); dc: dL/dc' from the
// step after; i, f, g, o: saved activations; c_prev, c_new: the cell before and after.
template <typename A>
FUSED_RNN_HD LstmBwd<A> lstm_bwd(A dy, A dc, A i, A f, A g, A o, A c_prev, A c_new) {
  const A tc = tanh_(c_new);
  const A dcv = dc + dy * o * (A(1) - tc * tc);
  LstmBwd<A> r;
  r.da_i = dcv * g * i * (A(1) - i);
  r.da_f = dcv * c_prev * f * (A(1) - f);
  r.da_g = dcv * i * (A(1) - g * g);
  r.da_o = dy * tc * o * (A(1) - o);
  r.dc_prev = dcv * f;
  return r;
}

// ---------------------------------------------------------------- GRU (gates r, z, n)

template <typename A>
struct GruFwd {
  A r, z, n, hn;  // saved for backward; hn = W_hn h + b_hn
  A h;            // h' = (1 - z) n + z h
};

// a_r, a_z: pre-activations with both biases; a_nx = W_in x + b_in; hn = W_hn h + b_hn (it
// stays inside the reset product); h: the state before the step.
template <typename A>
FUSED_RNN_HD GruFwd<A> gru_fwd(A a_r, A a_z, A a_nx, A hn, A h) {
  GruFwd<A> r;
  r.r = sigmoid_(a_r);
  r.z = sigmoid_(a_z);
  r.hn = hn;
  r.n = tanh_(a_nx + r.r * hn);
  r.h = r.n + r.z * (h - r.n);
  return r;
}

template <typename A>
struct GruBwd {
  A da_r, da_z, da_n;  // input side [r, z, n]
  A da_hn;             // hidden side of n: da_n r (hidden side is [da_r, da_z, da_hn])
  A dh_direct;         // dh' z: the part of dL/dh that does not go through W_hh
};

// dh: dL/dh'; r, z, n, hn: saved; h: the state before the step.
template <typename A>
FUSED_RNN_HD GruBwd<A> gru_bwd(A dh, A r, A z, A n, A hn, A h) {
  GruBwd<A> o;
  o.da_n = dh * (A(1) - z) * (A(1) - n * n);
  o.da_r = o.da_n * hn * r * (A(1) - r);
  o.da_z = dh * (h - n) * z * (A(1) - z);
  o.da_hn = o.da_n * r;
  o.dh_direct = dh * z;
  return o;
}

// ---------------------------------------------------------------- RNN (tanh or relu)

// a: the pre-activation with both biases.
template <typename A>
FUSED_RNN_HD A rnn_fwd(A a, bool relu) {
  return relu ? (a < A(0) ? A(0) : a) : tanh_(a);  // NaN stays NaN, as torch's relu
}

// dh: dL/dh'; h_new: h' (the saved output of the step).
template <typename A>
FUSED_RNN_HD A rnn_bwd(A dh, A h_new, bool relu) {
  return relu ? (h_new > A(0) ? dh : A(0)) : dh * (A(1) - h_new * h_new);
}

}  // namespace cuda
}  // namespace fused_rnn
