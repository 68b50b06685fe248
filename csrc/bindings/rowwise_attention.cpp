// torch.ops.fused_rnn.rowwise_attention_forward / _backward: the cuda backend's attention,
// the kernels of csrc/include/fused_rnn/attention_row.cuh (forward: a block per query row;
// backward: a block per batch element, rows in order).
//
// CUDA tensors (a build with FUSED_RNN_WITH_CUDA): the kernels through attention_launch.h
// on the current stream. CPU tensors (every build): the kernels' per-element functions in
// the same phases on host threads (rows of the forward, batch elements of the backward), so
// that everything but the block reductions and the launch is tested without a GPU.
// Built by the host compiler against torch's core headers only, as stepwise_recurrence.cpp.
#include "attention_checks.h"
#include "device_dispatch.h"
#include "schemas.h"

#include <string>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "fused_rnn/attention_row.cuh"
#ifdef FUSED_RNN_WITH_CUDA
#include "fused_rnn/attention_launch.h"
#endif

namespace fused_rnn {
namespace {

using at::Tensor;
using c10::optional;

// The forward of rows [r0, r1) on the host, phase by phase as attention_fwd_kernel.
template <typename T, typename A>
void host_forward_rows(const cuda::AttnArgs<T, A>& a, int64_t r0, int64_t r1) {
  const int64_t Tk = a.s.Tk;
  std::vector<A> p(static_cast<size_t>(Tk));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / a.s.Tq, q = r % a.s.Tq;
    A m = A(-INFINITY);
    for (int64_t j = 0; j < Tk; ++j) {
      p[j] = cuda::attends(a, b, j) ? cuda::score(a, b, q, j) : A(-INFINITY);
      m = cuda::nan_max(m, p[j]);
    }
    A l = A(0);
    for (int64_t j = 0; j < Tk; ++j) {
      p[j] = cuda::attends(a, b, j) && m != A(-INFINITY) ? cuda::exp_(p[j] - m) : A(0);
      l += p[j];
    }
    a.lse[r] = cuda::log_sum_exp(m, l);
    if (a.weights) {
      for (int64_t j = 0; j < Tk; ++j) cuda::put(a.weights + r * Tk + j, l == A(0) ? A(0) : p[j] / l);
    }
    for (int64_t d = 0; d < a.s.Dv; ++d) cuda::context_elem(a, b, q, d, p.data(), l);
  }
}

// The backward of batch elements [b0, b1) on the host, as attention_bwd_kernel.
template <typename T, typename A>
void host_backward_batch(const cuda::AttnArgs<T, A>& a, int64_t b0, int64_t b1) {
  const int64_t Tk = a.s.Tk, D = a.s.D, Dv = a.s.Dv;
  std::vector<A> w(static_cast<size_t>(Tk)), dw(w), ds(w);
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t q = 0; q < a.s.Tq; ++q) {
      A c = A(0);
      for (int64_t j = 0; j < Tk; ++j) {
        cuda::weight_and_grad(a, b, q, j, &w[j], &dw[j]);
        c += w[j] * dw[j];
      }
      for (int64_t j = 0; j < Tk; ++j) ds[j] = w[j] * (dw[j] - c);
      for (int64_t d = 0; d < D; ++d) cuda::query_grad_elem(a, b, q, d, ds.data());
      for (int64_t j = 0; j < Tk; ++j) {
        if (!cuda::attends(a, b, j)) continue;
        for (int64_t d = 0; d < D; ++d) cuda::key_grad_elem(a, b, q, j, d, ds[j]);
        for (int64_t d = 0; d < Dv; ++d) cuda::value_grad_elem(a, b, q, j, d, w[j]);
      }
    }
  }
}

template <typename T, typename A>
struct HostRows {
  void forward(const cuda::AttnArgs<T, A>& a) const {
    at::parallel_for(0, a.s.B * a.s.Tq, 1, [&](int64_t r0, int64_t r1) { host_forward_rows(a, r0, r1); });
  }
  void backward(const cuda::AttnArgs<T, A>& a) const {
    at::parallel_for(0, a.s.B, 1, [&](int64_t b0, int64_t b1) { host_backward_batch(a, b0, b1); });
  }
};

#ifdef FUSED_RNN_WITH_CUDA
template <typename T, typename A>
struct CudaRows {
  void* stream;
  void forward(const cuda::AttnArgs<T, A>& a) const {
    check_launch(cuda::launch_attention_forward(a, stream), "attention forward");
  }
  void backward(const cuda::AttnArgs<T, A>& a) const {
    check_launch(cuda::launch_attention_backward(a, stream), "attention backward");
  }
};
#endif

// The arguments both directions share; Tk within what the kernels hold on chip.
template <typename T, typename A>
cuda::AttnArgs<T, A> common_args(const AttnSizes& s, const Tensor& q, const Tensor& k,
                                 const Tensor& vals, const Tensor& v, const Tensor& mask,
                                 const Tensor& lengths, bool additive, double scale) {
  TORCH_CHECK(s.Tk <= cuda::kMaxKeys<A>, "fused_rnn: the cuda backend's attention takes at most ",
              cuda::kMaxKeys<A>, " keys per row in ", q.scalar_type(), ", got ", s.Tk,
              " (use the triton or reference backend)");
  cuda::AttnArgs<T, A> a{};
  a.s = cuda::AttnShape{s.B, s.Tq, s.Tk, s.D, s.Dv};
  a.additive = additive;
  a.scale = A(scale);
  a.q = ptr<T>(q);
  a.k = ptr<T>(k);
  a.values = ptr<T>(vals);
  a.v = ptr<T>(v);
  a.mask = ptr<bool>(mask);
  a.lengths = ptr<int64_t>(lengths);
  return a;
}

// g(args) with the arguments both directions share, typed for q's dtype, under q's device
// guard; the tensors they point into are held for the call (v may be a strided view).
template <typename G>
auto with_common_args(const AttnSizes& s, const Tensor& q, const Tensor& k, const Tensor& vals,
                      const optional<Tensor>& lengths, const optional<Tensor>& mask,
                      const optional<Tensor>& v, bool additive, double scale, const G& g) {
  const c10::DeviceGuard guard(q.device());
  const Tensor v_c = opt(v), mask_c = opt(mask), len_c = opt(lengths);
  const Tensor len = len_c.defined() ? len_c.to(q.device()) : Tensor();
  return with_storage(q, [&](auto t, auto acc) {
    return g(common_args<decltype(t), decltype(acc)>(s, q, k, vals, v_c, mask_c, len, additive,
                                                     scale));
  });
}

template <typename Args>
void run(const Tensor& q, const Args& a, bool forward) {
  using T = typename Args::storage;
  using A = typename Args::accumulation;
  with_runner<T, A, HostRows, FUSED_RNN_CUDA_RUNNER(CudaRows)>(q, [&](const auto& rows) {
    if (forward) {
      rows.forward(a);
    } else {
      rows.backward(a);
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> forward(const Tensor& q, const Tensor& k, const Tensor& vals,
                                           const optional<Tensor>& lengths,
                                           const optional<Tensor>& mask,
                                           const optional<Tensor>& v, bool additive,
                                           double scale, bool need_weights) {
  check_device(q, "query");
  const AttnSizes s = check_attention(q, k, vals, lengths, mask, v, additive);
  return with_common_args(s, q, k, vals, lengths, mask, v, additive, scale, [&](auto a) {
    using T = typename decltype(a)::storage;
    using A = typename decltype(a)::accumulation;
    Tensor context = at::empty({s.B, s.Tq, s.Dv}, q.options());
    Tensor weights = need_weights ? at::empty({s.B, s.Tq, s.Tk}, q.options())
                                  : at::empty({0}, q.options());
    Tensor lse = at::empty({s.B, s.Tq}, q.options().dtype(c10::CppTypeToScalarType<A>::value));
    a.context = ptr<T>(context);
    a.weights = need_weights ? ptr<T>(weights) : nullptr;
    a.lse = ptr<A>(lse);
    run(q, a, /*forward=*/true);
    return std::make_tuple(context, weights, lse);
  });
}

std::vector<Tensor> backward(const Tensor& q, const Tensor& k, const Tensor& vals,
                             const optional<Tensor>& lengths, const optional<Tensor>& mask,
                             const optional<Tensor>& v, bool additive, double scale,
                             const Tensor& lse, const Tensor& dctx,
                             const optional<Tensor>& dweights) {
  check_device(q, "query");
  const AttnSizes s = check_attention(q, k, vals, lengths, mask, v, additive);
  const at::ScalarType acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  check_attention_grads(q, s, lse, acc_type, dctx, dweights);
  const Tensor lse_c = lse.contiguous(), dctx_c = dctx.contiguous(), dw_c = opt(dweights);
  return with_common_args(s, q, k, vals, lengths, mask, v, additive, scale, [&](auto a) {
    using T = typename decltype(a)::storage;
    using A = typename decltype(a)::accumulation;
    const auto opts = q.options().dtype(acc_type);
    Tensor dq = at::empty({s.B, s.Tq, s.D}, opts), dk = at::zeros({s.B, s.Tk, s.D}, opts);
    Tensor dvals = at::zeros({s.B, s.Tk, s.Dv}, opts);
    Tensor dv = additive ? at::zeros({s.B, s.D}, opts) : Tensor();
    a.lse = ptr<A>(lse_c);
    a.dctx = ptr<T>(dctx_c);
    a.dweights = ptr<T>(dw_c);
    a.dq = ptr<A>(dq);
    a.dk = ptr<A>(dk);
    a.dvalues = ptr<A>(dvals);
    a.dv = ptr<A>(dv);
    run(q, a, /*forward=*/false);
    const auto st = q.scalar_type();
    return std::vector<Tensor>{dq.to(st), dk.to(st), dvals.to(st),
                               additive ? dv.sum(0).to(st) : at::empty({0}, q.options())};
  });
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def((std::string("rowwise_attention_forward") + fused_rnn::schema::kAttentionForward).c_str());
  m.def((std::string("rowwise_attention_backward") + fused_rnn::schema::kAttentionBackward)
            .c_str());
}

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("rowwise_attention_forward", &fused_rnn::forward);
  m.impl("rowwise_attention_backward", &fused_rnn::backward);
}

#ifdef FUSED_RNN_WITH_CUDA
TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("rowwise_attention_forward", &fused_rnn::forward);
  m.impl("rowwise_attention_backward", &fused_rnn::backward);
}
#endif
