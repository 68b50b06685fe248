// torch.ops.fused_rnn.stepwise_recurrence_forward / _backward: the cuda backend's
// recurrence (csrc/stepwise/recurrence_loop.h: a GEMM per step through ATen, then the fused
// pointwise step kernel of recurrence_step.cuh; or, where sequence_plan.h says so, one
// whole-sequence launch for all steps: recurrence_sequence.cuh, one block per batch tile, or
// recurrence_grid.cuh, the hidden units over several blocks).
// torch.ops.fused_rnn.stepwise_sequence_plan tells which: [rows, units, blocks] (rows 0: per
// step; units 0: single-block); stepwise_sequence_rows the single-block path's rows, else 0.
//
// CUDA tensors (a build with FUSED_RNN_WITH_CUDA): the kernels, through the launchers of
// recurrence_launch.h, on the current stream of x's device. CPU tensors (every build): the
// kernels' per-element functions on host threads, so that the loops, the saved layout and
// the GEMMs around the kernels are tested where there is no GPU.
//
// This file is built by the host compiler against torch's core headers only (no ATen/cuda,
// which a CPU build of torch lacks): the stream comes from c10's device-generic interface.
#include "device_dispatch.h"
#include "recurrence_checks.h"
#include "schemas.h"

#include <string>

#include "../stepwise/recurrence_loop.h"
#include "../stepwise/sequence_plan.h"

#include <algorithm>
#include <vector>

#ifdef FUSED_RNN_WITH_CUDA
#include "fused_rnn/recurrence_launch.h"
#include "fused_rnn/sequence_launch.h"
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

// Every tile of a whole-sequence run on host threads, each with its own "shared memory".
template <typename T, typename F>
void each_tile(int mode, const cuda::SeqShape& s, const F& f) {
  const int64_t elems = cuda::sequence_smem_elems(mode, s.H, s.rows);
  at::parallel_for(0, cuda::sequence_tiles(s), 1, [&](int64_t k0, int64_t k1) {
    std::vector<T> smem(static_cast<size_t>(elems));
    for (int64_t k = k0; k < k1; ++k) f(k, smem.data());
  });
}

// A whole-sequence run of the multi-block kernels on the host: every block's slice loaded into
// its own "shared memory", then per step every block's step (blocks on host threads), the end
// of at::parallel_for being the grid barrier. Steps go in the kernel's order: `steps` lists
// them.
template <typename T, typename Load, typename Step>
void each_grid_step(int mode, const cuda::SeqShape& s, int64_t units, int64_t first, int64_t stride,
                    const Load& load, const Step& step) {
  const int64_t blocks = cuda::grid_blocks(s.H, units);
  const int64_t elems = cuda::grid_smem_elems(mode, s.H, units, s.rows);
  std::vector<std::vector<T>> smem(static_cast<size_t>(blocks), std::vector<T>(static_cast<size_t>(elems)));
  for (int64_t k = 0; k < blocks; ++k) load(k, smem[k].data());
  for (int64_t i = 0, t = first; i < s.steps; ++i, t += stride) {
    at::parallel_for(0, blocks, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) step(k, t, smem[k].data());
    });
  }
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
  void sequence_fwd(int mode, const cuda::SeqFwdArgs<T, A>& a) const {
    cuda::with_mode(mode, [&](auto m) {
      each_tile<T>(mode, a.s, [&](int64_t k, T* smem) {
        cuda::sequence_fwd_tile<decltype(m)::value>(a, k, smem, cuda::HostBlock{});
      });
    });
  }
  void sequence_bwd(int mode, const cuda::SeqBwdArgs<T, A>& a) const {
    cuda::with_mode(mode, [&](auto m) {
      each_tile<T>(mode, a.s, [&](int64_t k, T* smem) {
        cuda::sequence_bwd_tile<decltype(m)::value>(a, k, smem, cuda::HostBlock{});
      });
    });
  }
  void grid_fwd(int mode, const cuda::SeqFwdArgs<T, A>& a, int64_t units) const {
    cuda::with_mode(mode, [&](auto m) {
      constexpr int M = decltype(m)::value;
      each_grid_step<T>(
          mode, a.s, units, 0, 1,
          [&](int64_t k, T* smem) { cuda::grid_fwd_load<M>(a, units, k, smem, cuda::HostBlock{}); },
          [&](int64_t k, int64_t t, T* smem) { cuda::grid_fwd_step<M>(a, units, k, t, smem, cuda::HostBlock{}); });
    });
  }
  void grid_bwd(int mode, const cuda::SeqBwdArgs<T, A>& a, int64_t units) const {
    cuda::with_mode(mode, [&](auto m) {
      constexpr int M = decltype(m)::value;
      each_grid_step<T>(
          mode, a.s, units, a.s.steps - 1, -1,
          [&](int64_t k, T* smem) { cuda::grid_bwd_load<M>(a, units, k, smem, cuda::HostBlock{}); },
          [&](int64_t k, int64_t t, T* smem) { cuda::grid_bwd_step<M>(a, units, k, t, smem, cuda::HostBlock{}); });
    });
  }
};

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

#ifdef FUSED_RNN_WITH_CUDA
template <typename T, typename A>
struct CudaPoints {
  void* stream;
  void fwd(int mode, const cuda::FwdStepArgs<T, A>& a) const {
    check_launch(cuda::launch_fwd_step(mode, a, stream), "recurrence step");
  }
  void bwd(int mode, const cuda::BwdStepArgs<T, A>& a) const {
    check_launch(cuda::launch_bwd_step(mode, a, stream), "recurrence step backward");
  }
  void proj_fwd_post(const cuda::ProjFwdPostArgs<T>& a) const {
    check_launch(cuda::launch_projection_fwd_post(a, stream), "projection step");
  }
  void proj_bwd_pre(const cuda::ProjBwdPreArgs<T, A>& a) const {
    check_launch(cuda::launch_projection_bwd_pre(a, stream), "projection step backward");
  }
  void sequence_fwd(int mode, const cuda::SeqFwdArgs<T, A>& a) const {
    check_launch(cuda::launch_sequence_fwd(mode, a, stream), "whole-sequence recurrence");
  }
  void sequence_bwd(int mode, const cuda::SeqBwdArgs<T, A>& a) const {
    check_launch(cuda::launch_sequence_bwd(mode, a, stream), "whole-sequence recurrence backward");
  }
  void grid_fwd(int mode, const cuda::SeqFwdArgs<T, A>& a, int64_t units) const {
    check_launch(cuda::launch_grid_fwd(mode, a, units, stream), "multi-block whole-sequence recurrence");
  }
  void grid_bwd(int mode, const cuda::SeqBwdArgs<T, A>& a, int64_t units) const {
    check_launch(cuda::launch_grid_bwd(mode, a, units, stream),
                 "multi-block whole-sequence recurrence backward");
  }
};
#endif

// The budget of x's device. CUDA: its opt-in shared memory; single-block tiles that spread the
// batch over the multiprocessors; one multi-block block per multiprocessor (the launcher
// checks the occupancy), chunks of kSeqMaxRows rows. CPU tensors: as an sm_80 device's
// shared memory, with two rows a tile or chunk so that the tests' small batches span several,
// the last one partial, and at most 3 blocks, so that their H splits over several blocks
// (H = 13: 5, 5, 3 units).
stepwise::TileBudget tile_budget(const Tensor& x, int64_t B) {
#ifdef FUSED_RNN_WITH_CUDA
  if (x.is_cuda()) {
    int64_t smem = 0, sms = 1;
    check_launch(cuda::sequence_device_limits(x.device().index(), &smem, &sms),
                 "whole-sequence recurrence (device query)");
    return {smem, (B + sms - 1) / std::max<int64_t>(sms, 1), std::max<int64_t>(sms, 1), cuda::kSeqMaxRows};
  }
#endif
  (void)x;
  (void)B;
  return {cuda::kSeqSmemSm80, 2, 3, 2};
}

// The loop this layer runs (sequence_plan.h).
stepwise::SequencePlan layer_plan(int64_t mode, const Tensor& x, const Tensor& w_hh,
                                  const optional<Tensor>& w_hr) {
  const int64_t B = x.size(1), H = w_hh.size(1);
  const bool proj = w_hr.has_value() && w_hr->defined();
  return stepwise::sequence_plan(int(mode), B, proj ? w_hr->size(1) : H, proj, x.element_size(),
                                 tile_budget(x, B));
}

stepwise::SequencePlan plan_op_args(int64_t mode, const Tensor& x, const Tensor& w_hh,
                                    const optional<Tensor>& w_hr) {
  check_device(x, "x");
  TORCH_CHECK(mode >= 0 && mode <= 3, "fused_rnn: mode must be 0 (LSTM), 1 (GRU), 2 (RNN tanh) "
              "or 3 (RNN relu), got ", mode);
  TORCH_CHECK(x.dim() == 3, "fused_rnn: x must have 3 dimensions [T, B, I], got ", x.dim());
  TORCH_CHECK(w_hh.dim() == 2, "fused_rnn: w_hh must have 2 dimensions [G*H, P], got ", w_hh.dim());
  return layer_plan(mode, x, w_hh, w_hr);
}

// The single-block path's rows per tile, 0 for any other loop.
int64_t sequence_rows_op(int64_t mode, const Tensor& x, const Tensor& w_hh,
                         const optional<Tensor>& w_hr) {
  const stepwise::SequencePlan plan = plan_op_args(mode, x, w_hh, w_hr);
  return plan.single_block() ? plan.rows : 0;
}

// [rows, units, blocks]: [0, 0, 0] the per-step loop; [rows per tile, 0, tiles] single-block;
// [rows per chunk, units per block, blocks] multi-block.
std::vector<int64_t> sequence_plan_op(int64_t mode, const Tensor& x, const Tensor& w_hh,
                                      const optional<Tensor>& w_hr) {
  const stepwise::SequencePlan plan = plan_op_args(mode, x, w_hh, w_hr);
  const int64_t B = x.size(1), H = w_hh.size(1);
  const int64_t blocks = plan.grid() ? cuda::grid_blocks(H, plan.units)
                         : plan.single_block() ? (B + plan.rows - 1) / plan.rows : 0;
  return {plan.rows, plan.units, blocks};
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> forward(
    int64_t mode, bool reverse, const Tensor& x_, const Tensor& h0, const optional<Tensor>& c0,
    const optional<Tensor>& lengths, const Tensor& w_ih, const Tensor& w_hh,
    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, const optional<Tensor>& w_hr,
    int64_t saves) {
  check_device(x_, "x");
  // Anything saved is everything: these kernels never recompute the activations.
  const bool need_saved = saves != 0;
  check_recurrence_args(mode, x_, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, w_hr);
  return with_layer_runner<HostPoints, FUSED_RNN_CUDA_RUNNER(CudaPoints)>(
      x_, lengths, [&](auto t, auto a, const auto& points, const Tensor& x, const Tensor& len,
                       const Tensor&) {
        return stepwise::forward<decltype(t), decltype(a)>(
            int(mode), reverse, x, h0.contiguous(), opt(c0), len, w_ih.contiguous(),
            w_hh.contiguous(), opt(b_ih), opt(b_hh), opt(w_hr), need_saved,
            layer_plan(mode, x, w_hh, w_hr), points);
      });
}

std::vector<Tensor> backward(int64_t mode, bool reverse, const Tensor& x_, const Tensor& h0,
                             const optional<Tensor>& c0, const optional<Tensor>& lengths,
                             const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
                             const optional<Tensor>& b_hh, const optional<Tensor>& w_hr,
                             at::TensorList saved, const Tensor& dy, const optional<Tensor>& dh_n,
                             const optional<Tensor>& dc_n) {
  check_device(x_, "x");
  const RecurrenceSizes s =
      check_recurrence_args(mode, x_, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, w_hr);
  const bool proj = w_hr.has_value() && w_hr->defined();
  check_saved(mode, x_, s, proj, saved);
  check_output_grads(mode, x_, s, dy, dh_n, dc_n);
  return with_layer_runner<HostPoints, FUSED_RNN_CUDA_RUNNER(CudaPoints)>(
      x_, lengths, [&](auto t, auto a, const auto& points, const Tensor& x, const Tensor& len,
                       const Tensor& len_cpu) {
        return stepwise::backward<decltype(t), decltype(a)>(
            int(mode), reverse, x, len, len_cpu, w_ih.contiguous(), w_hh.contiguous(),
            opt(b_ih).defined(), opt(w_hr), saved.vec(), dy.contiguous(), opt(dh_n), opt(dc_n),
            layer_plan(mode, x, w_hh, w_hr), points);
      });
}

}  // namespace
}  // namespace fused_rnn

TORCH_LIBRARY_FRAGMENT(fused_rnn, m) {
  m.def((std::string("stepwise_recurrence_forward") + fused_rnn::schema::kRecurrenceForward)
            .c_str());
  m.def((std::string("stepwise_recurrence_backward") + fused_rnn::schema::kRecurrenceBackward)
            .c_str());
  m.def("stepwise_sequence_rows(int mode, Tensor x, Tensor w_hh, Tensor? w_hr) -> int",
        &fused_rnn::sequence_rows_op);
  m.def("stepwise_sequence_plan(int mode, Tensor x, Tensor w_hh, Tensor? w_hr) -> int[]",
        &fused_rnn::sequence_plan_op);
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
