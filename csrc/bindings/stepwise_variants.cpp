// torch.ops.fused_rnn.stepwise_variant_forward / _backward: the cuda backend's variant
// recurrences (csrc/stepwise/variant_loop.h: a GEMM per step through ATen, then the fused
// row step of variant_row.cuh). The cpu backend's variant_* schema.
//
// CUDA tensors (a build with FUSED_RNN_WITH_CUDA): the kernels, through variant_launch.h, on
// the current stream of x's device. CPU tensors (every build): the kernels' row bodies on
// host threads with a one-thread block, so that everything but the launch is tested where
// there is no GPU. Built by the host compiler against torch's core headers only, as
// stepwise_recurrence.cpp.
#include "device_dispatch.h"
#include "schemas.h"
#include "variant_checks.h"

#include <string>

#include "../stepwise/variant_loop.h"

#ifdef FUSED_RNN_WITH_CUDA
#include "fused_rnn/variant_launch.h"
#endif

namespace fused_rnn {
namespace {

using at::Tensor;
using c10::optional;

// Every row of a step on host threads, each with the whole (one-thread) block.
template <typename Args, typename Body>
void each_row(const Args& a, const Body& body) {
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, 4 * a.s.H));
  at::parallel_for(0, a.s.B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) body(b, cuda::HostBlock{});
  });
}

template <typename T, typename A>
struct HostRows {
  void fwd(int mode, const cuda::VariantFwdArgs<T, A>& a) const {
    cuda::with_variant_mode(mode, [&](auto m) {
      each_row(a, [&](int64_t b, const cuda::HostBlock& blk) {
        cuda::variant_fwd_row<decltype(m)::value>(a, b, blk);
      });
    });
  }
  void bwd(int mode, const cuda::VariantBwdArgs<T, A>& a) const {
    cuda::with_variant_mode(mode, [&](auto m) {
      each_row(a, [&](int64_t b, const cuda::HostBlock& blk) {
        cuda::variant_bwd_row<decltype(m)::value>(a, b, blk);
      });
    });
  }
};

#ifdef FUSED_RNN_WITH_CUDA
template <typename T, typename A>
struct CudaRows {
  void* stream;
  void fwd(int mode, const cuda::VariantFwdArgs<T, A>& a) const {
    check_launch(cuda::launch_variant_fwd(mode, a, stream), "variant step");
  }
  void bwd(int mode, const cuda::VariantBwdArgs<T, A>& a) const {
    check_launch(cuda::launch_variant_bwd(mode, a, stream), "variant step backward");
  }
};
#endif

// What forward saved (variant_loop.h), checked against the sizes.
void check_saved(int64_t mode, const Tensor& x, const VariantSizes& s, bool ln,
                 at::TensorList saved) {
  const bool lstm = mode == cuda::kLSTM;
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t T = s.T, B = s.B, H = s.H, GH = s.G * s.H;
  std::vector<std::tuple<const char*, std::vector<int64_t>, at::ScalarType>> want = {
      {"saved[acts]", {T, B, 4 * H}, x.scalar_type()}, {"saved[hs]", {T + 1, B, H}, x.scalar_type()}};
  if (lstm) {
    want.push_back({"saved[cs]", {T + 1, B, H}, acc});
    want.push_back({"saved[ct]", {T, B, H}, acc});
  }
  if (ln) {
    want.push_back({"saved[gh_hat]", {T, B, GH}, x.scalar_type()});
    want.push_back({"saved[gh_rstd]", {T, B}, acc});
    if (lstm) want.push_back({"saved[c_rstd]", {T, B}, acc});
    want.push_back({"saved[gx]", {T, B, GH}, x.scalar_type()});
    want.push_back({"saved[gx_mean]", {T, B}, acc});
    want.push_back({"saved[gx_rstd]", {T, B}, acc});
  }
  TORCH_CHECK(saved.size() == want.size(), "fused_rnn: saved must hold the ", want.size(),
              " tensors stepwise_variant_forward returned for this call, got ", saved.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const auto& [name, sizes, dtype] = want[i];
    const Tensor& t = saved[i];
    TORCH_CHECK(t.device() == x.device() && t.scalar_type() == dtype &&
                    t.sizes() == at::IntArrayRef(sizes) && t.is_contiguous(),
                "fused_rnn: ", name, " must be a contiguous ", dtype, " tensor of shape ",
                at::IntArrayRef(sizes), " on ", x.device(), ", got ", t.scalar_type(), " ",
                shape(t), " on ", t.device());
  }
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> forward(
    int64_t mode, bool reverse, const Tensor& x_, const Tensor& h0, const optional<Tensor>& c0,
    const optional<Tensor>& lengths, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, const optional<Tensor>& ln_ih,
    const optional<Tensor>& ln_hh, const optional<Tensor>& ln_c_weight,
    const optional<Tensor>& ln_c_bias, const optional<Tensor>& keep_h,
    const optional<Tensor>& keep_c, bool need_saved) {
  check_device(x_, "x");
  check_variant_args(mode, x_, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight,
                     ln_c_bias, keep_h, keep_c);
  const auto w = variant_weights(w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias);
  return with_layer_runner<HostRows, FUSED_RNN_CUDA_RUNNER(CudaRows)>(
      x_, lengths, [&](auto t, auto a, const auto& rows, const Tensor& x, const Tensor& len,
                       const Tensor&) {
    return stepwise::variant_forward<decltype(t), decltype(a)>(
        int(mode), reverse, x, h0.contiguous(), opt(c0), len, w, opt(keep_h), opt(keep_c),
        need_saved, rows);
  });
}

std::vector<Tensor> backward(
    int64_t mode, bool reverse, const Tensor& x_, const Tensor& h0, const optional<Tensor>& c0,
    const optional<Tensor>& lengths, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, const optional<Tensor>& ln_ih,
    const optional<Tensor>& ln_hh, const optional<Tensor>& ln_c_weight,
    const optional<Tensor>& ln_c_bias, const optional<Tensor>& keep_h,
    const optional<Tensor>& keep_c, at::TensorList saved, const Tensor& dy,
    const optional<Tensor>& dh_n, const optional<Tensor>& dc_n) {
  check_device(x_, "x");
  const VariantSizes s = check_variant_args(mode, x_, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh,
                                            ln_ih, ln_hh, ln_c_weight, ln_c_bias, keep_h, keep_c);
  check_saved(mode, x_, s, given(ln_ih), saved);
  check_variant_grads(mode, x_, s, dy, dh_n, dc_n);
  const auto w = variant_weights(w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias);
  return with_layer_runner<HostRows, FUSED_RNN_CUDA_RUNNER(CudaRows)>(
      x_, lengths, [&](auto t, auto a, const auto& rows, const Tensor& x, const Tensor& len,
                       const Tensor& len_cpu) {
    return stepwise::variant_backward<decltype(t), decltype(a)>(
        int(mode), reverse, x, len, len_cpu, w, opt(keep_h), opt(keep_c), saved.vec(),
        dy.contiguous(), opt(dh_n), opt(dc_n), rows);
  });
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def((std::string("stepwise_variant_forward") + fused_rnn::schema::kVariantForward).c_str());
  m.def((std::string("stepwise_variant_backward") + fused_rnn::schema::kVariantBackward).c_str());
}

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("stepwise_variant_forward", &fused_rnn::forward);
  m.impl("stepwise_variant_backward", &fused_rnn::backward);
}

#ifdef FUSED_RNN_WITH_CUDA
TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("stepwise_variant_forward", &fused_rnn::forward);
  m.impl("stepwise_variant_backward", &fused_rnn::backward);
}
#endif
