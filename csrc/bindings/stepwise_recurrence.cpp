// torch.ops.fused_rnn.stepwise_recurrence_forward / _backward: the cuda backend's
// recurrence (csrc/stepwise/recurrence_loop.h: a GEMM per step through ATen, then the fused
// pointwise step kernel of recurrence_step.cuh).
//
// CUDA tensors (a build with FUSED_RNN_WITH_CUDA): the kernels, through the launchers of
// recurrence_launch.h, on the current stream of x's device. CPU tensors (every build): the
// kernels' per-element functions on host threads, so that the loops, the saved layout and
// the GEMMs around the kernels are tested where there is no GPU.
//
// This file is built by the host compiler against torch's core headers only (no ATen/cuda,
// which a CPU build of torch lacks): the stream comes from c10's device-generic interface.
#include "recurrence_checks.h"

#include "../stepwise/recurrence_loop.h"

#include <algorithm>
#include <type_traits>

#ifdef FUSED_RNN_WITH_CUDA
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "fused_rnn/recurrence_launch.h"
#endif

namespace fused_rnn {
namespace {

using at::Tensor;
using c10::optional;

// Every (row, unit) of a step on host threads, rows split over threads.
template <typename F>
void each_point(int64_t B, int64_t N, const F& f) {
  at::parallel_for(0, B, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, N)),
                   [&](int64_t b0, int64_t b1) {
                     for (int64_t b = b0; b < b1; ++b) {
                       for (int64_t j = 0; j < N; ++j) f(b, j);
                     }
                   });
}

template <typename T, typename A>
struct HostPoints {
  void fwd(int mode, const cuda::FwdStepArgs<T, A>& a) const {
    cuda::with_mode(mode, [&](auto m) {
      each_point(a.s.B, a.s.H, [&](int64_t b, int64_t j) { cuda::fwd_point<decltype(m)::value>(a, b, j); });
    });
  }
  void bwd(int mode, const cuda::BwdStepArgs<T, A>& a) const {
    cuda::with_mode(mode, [&](auto m) {
      each_point(a.s.B, a.s.H, [&](int64_t b, int64_t j) { cuda::bwd_point<decltype(m)::value>(a, b, j); });
    });
  }
  void proj_fwd_post(const cuda::ProjFwdPostArgs<T>& a) const {
    each_point(a.s.B, a.s.P, [&](int64_t b, int64_t j) { cuda::proj_fwd_post_point(a, b, j); });
  }
  void proj_bwd_pre(const cuda::ProjBwdPreArgs<T, A>& a) const {
    each_point(a.s.B, a.s.P, [&](int64_t b, int64_t j) { cuda::proj_bwd_pre_point(a, b, j); });
  }
};

Tensor opt(const optional<Tensor>& t) { return t.has_value() && t->defined() ? t->contiguous() : Tensor(); }

// The saved tensors forward returned (see recurrence_loop.h), checked against the sizes.
void check_saved(int64_t mode, const Tensor& x, const RecurrenceSizes& s, bool proj,
                 at::TensorList saved) {
  const bool lstm = mode == cuda::kLSTM, gru = mode == cuda::kGRU;
  const size_t want = size_t(lstm || gru) + 1 + size_t(lstm) + size_t(proj);
  TORCH_CHECK(saved.size() == want, "fused_rnn: saved must hold the ", want,
              " tensors stepwise_recurrence_forward returned for ", mode_name(mode), ", got ",
              saved.size());
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  size_t n = 0;
  const auto want_saved = [&](const char* name, at::IntArrayRef sizes, at::ScalarType dtype) {
    const Tensor& t = saved[n++];
    TORCH_CHECK(t.device() == x.device() && t.scalar_type() == dtype && t.sizes() == sizes &&
                    t.is_contiguous(),
                "fused_rnn: ", name, " must be a contiguous ", dtype, " tensor of shape ", sizes,
                " on ", x.device(), ", got ", t.scalar_type(), " ", shape(t), " on ", t.device());
  };
  if (lstm || gru) want_saved("saved[acts]", {s.T, s.B, 4 * s.H}, x.scalar_type());
  want_saved("saved[hs]", {s.T + 1, s.B, s.P}, x.scalar_type());
  if (lstm) want_saved("saved[cs]", {s.T + 1, s.B, s.H}, acc);
  if (proj) want_saved("saved[y_pre]", {s.T, s.B, s.H}, x.scalar_type());
}

// f(T{}, A{}) for x's dtype: host storage types as recurrence_launch.h names them.
template <typename F>
auto with_dtype(const Tensor& x, bool on_cuda, const F& f) {
  switch (x.scalar_type()) {
    case at::kFloat: return f(float{}, float{});
    case at::kDouble: return f(double{}, double{});
#ifdef FUSED_RNN_WITH_CUDA
    case at::kHalf:
      if (on_cuda) return f(cuda::half_storage{}, float{});
      break;
    case at::kBFloat16:
      if (on_cuda) return f(cuda::bfloat16_storage{}, float{});
      break;
#endif
    default: break;
  }
  TORCH_CHECK(false, "fused_rnn: x must be float32 or float64", on_cuda ? ", float16 or bfloat16" : "",
              " for the stepwise recurrence on ", x.device(), ", got ", x.scalar_type());
}

#ifdef FUSED_RNN_WITH_CUDA
template <typename T, typename A>
struct CudaPoints {
  void* stream;
  static void check(int error) {
    TORCH_CHECK(error == 0, "fused_rnn: a CUDA step kernel failed to launch: ",
                cuda::launch_error_string(error));
  }
  void fwd(int mode, const cuda::FwdStepArgs<T, A>& a) const { check(cuda::launch_fwd_step(mode, a, stream)); }
  void bwd(int mode, const cuda::BwdStepArgs<T, A>& a) const { check(cuda::launch_bwd_step(mode, a, stream)); }
  void proj_fwd_post(const cuda::ProjFwdPostArgs<T>& a) const {
    check(cuda::launch_projection_fwd_post(a, stream));
  }
  void proj_bwd_pre(const cuda::ProjBwdPreArgs<T, A>& a) const {
    check(cuda::launch_projection_bwd_pre(a, stream));
  }
};

void* current_stream(const at::Device& device) {
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(device).native_handle();
}
#endif

// g(points) with the step runner of x's device for storage T, accumulation A.
template <typename T, typename A, typename G>
auto with_points(const Tensor& x, const G& g) {
#ifdef FUSED_RNN_WITH_CUDA
  if constexpr (!std::is_floating_point<T>::value) {  // half storage: CUDA only (with_dtype)
    return g(CudaPoints<T, A>{current_stream(x.device())});
  } else {
    if (x.is_cuda()) return g(CudaPoints<T, A>{current_stream(x.device())});
    return g(HostPoints<T, A>{});
  }
#else
  return g(HostPoints<T, A>{});
#endif
}

void check_device(const Tensor& x) {
  TORCH_CHECK(x.is_cpu() || x.is_cuda(), "fused_rnn: x must be a CPU or CUDA tensor, got ",
              x.device());
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> forward(
    int64_t mode, bool reverse, const Tensor& x_, const Tensor& h0, const optional<Tensor>& c0,
    const optional<Tensor>& lengths, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, const optional<Tensor>& w_hr,
    bool need_saved) {
  check_device(x_);
  check_recurrence_args(mode, x_, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, w_hr);
  const c10::DeviceGuard guard(x_.device());
  const Tensor x = x_.contiguous();
  const Tensor len = lengths.has_value() && lengths->defined() ? lengths->to(x.device()) : Tensor();
  return with_dtype(x, x.is_cuda(), [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    return with_points<T, A>(x, [&](const auto& points) {
      return stepwise::forward<T, A>(int(mode), reverse, x, h0.contiguous(), opt(c0), len,
                                     w_ih.contiguous(), w_hh.contiguous(), opt(b_ih), opt(b_hh),
                                     opt(w_hr), need_saved, points);
    });
  });
}

std::vector<Tensor> backward(int64_t mode, bool reverse, const Tensor& x_, const Tensor& h0,
                             const optional<Tensor>& c0, const optional<Tensor>& lengths,
                             const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
                             const optional<Tensor>& b_hh, const optional<Tensor>& w_hr,
                             at::TensorList saved, const Tensor& dy, const optional<Tensor>& dh_n,
                             const optional<Tensor>& dc_n) {
  check_device(x_);
  const RecurrenceSizes s =
      check_recurrence_args(mode, x_, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, w_hr);
  const bool proj = w_hr.has_value() && w_hr->defined();
  check_saved(mode, x_, s, proj, saved);
  check_output_grads(mode, x_, s, dy, dh_n, dc_n);
  const c10::DeviceGuard guard(x_.device());
  const Tensor x = x_.contiguous();
  const Tensor len_cpu = opt(lengths);
  const Tensor len = len_cpu.defined() ? len_cpu.to(x.device()) : Tensor();
  return with_dtype(x, x.is_cuda(), [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    return with_points<T, A>(x, [&](const auto& points) {
      return stepwise::backward<T, A>(int(mode), reverse, x, len, len_cpu, w_ih.contiguous(),
                                      w_hh.contiguous(), opt(b_ih).defined(), opt(w_hr),
                                      saved.vec(), dy.contiguous(), opt(dh_n), opt(dc_n), points);
    });
  });
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def(
      "stepwise_recurrence_forward(int mode, bool reverse, Tensor x, Tensor h0, Tensor? c0, "
      "Tensor? lengths, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, "
      "bool need_saved) -> (Tensor, Tensor, Tensor, Tensor[])");
  m.def(
      "stepwise_recurrence_backward(int mode, bool reverse, Tensor x, Tensor h0, Tensor? c0, "
      "Tensor? lengths, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, "
      "Tensor[] saved, Tensor dy, Tensor? dh_n, Tensor? dc_n) -> Tensor[]");
  m.def("stepwise_has_cuda() -> bool", [] {
#ifdef FUSED_RNN_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("stepwise_recurrence_forward", &fused_rnn::forward);
  m.impl("stepwise_recurrence_backward", &fused_rnn::backward);
}

#ifdef FUSED_RNN_WITH_CUDA
TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("stepwise_recurrence_forward", &fused_rnn::forward);
  m.impl("stepwise_recurrence_backward", &fused_rnn::backward);
}
#endif
