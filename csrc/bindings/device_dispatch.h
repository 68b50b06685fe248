// What the bindings of the cuda backend's ops (stepwise_recurrence.cpp,
// rowwise_attention.cpp) share: the device and dtype dispatch, and the step runner of the
// device: the CUDA launchers, or the kernels' per-element functions on host threads for
// CPU tensors.
//
// Torch's core headers only (no ATen/cuda, which a CPU build of torch lacks): the current
// stream comes from c10's device-generic interface, so this compiles in every build.
#pragma once

#include "checks.h"

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <type_traits>

#include "../common/tensor_ptr.h"
#include "fused_rnn/launch_types.h"

namespace fused_rnn {

inline void check_device(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.is_cpu() || x.is_cuda(), "fused_rnn: ", name, " must be a CPU or CUDA tensor, got ",
              x.device());
}

// f(T{}, A{}) for x's dtype, T as the launch headers name it: float and double everywhere,
// float16 and bfloat16 on CUDA.
template <typename F>
auto with_storage(const at::Tensor& x, const F& f) {
  switch (x.scalar_type()) {
    case at::kFloat: return f(float{}, float{});
    case at::kDouble: return f(double{}, double{});
#ifdef FUSED_RNN_WITH_CUDA
    case at::kHalf:
      if (x.is_cuda()) return f(cuda::half_storage{}, float{});
      break;
    case at::kBFloat16:
      if (x.is_cuda()) return f(cuda::bfloat16_storage{}, float{});
      break;
#endif
    default: break;
  }
  TORCH_CHECK(false, "fused_rnn: the cuda backend's ops take float32 or float64",
              x.is_cuda() ? ", float16 or bfloat16" : "", " on ", x.device(), ", got ",
              x.scalar_type());
}

inline void check_launch(int error, const char* what) {
  TORCH_CHECK(error == 0, "fused_rnn: the CUDA kernel of the ", what, " failed to launch: ",
              cuda::launch_error_string(error));
}

inline void* current_stream(const at::Device& device) {
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(device).native_handle();
}

// Stands for the CUDA runner in a build without CUDA.
template <typename T, typename A>
struct NoCudaRunner {};
#ifdef FUSED_RNN_WITH_CUDA
#define FUSED_RNN_CUDA_RUNNER(Runner) Runner
#else
#define FUSED_RNN_CUDA_RUNNER(Runner) NoCudaRunner
#endif

// g(runner) with x's device's runner for storage T: Cuda<T, A>{stream} (constructed from the
// current stream) for CUDA tensors, Host<T, A>{} for CPU ones.
template <typename T, typename A, template <class, class> class Host,
          template <class, class> class Cuda, typename G>
auto with_runner(const at::Tensor& x, const G& g) {
#ifdef FUSED_RNN_WITH_CUDA
  if constexpr (!std::is_floating_point<T>::value) {  // half storage: CUDA only (with_storage)
    return g(Cuda<T, A>{current_stream(x.device())});
  } else {
    if (x.is_cuda()) return g(Cuda<T, A>{current_stream(x.device())});
    return g(Host<T, A>{});
  }
#else
  (void)x;
  return g(Host<T, A>{});
#endif
}

// The prologue of a recurrent layer's op: g(T{}, A{}, runner, x, lengths on x's device,
// lengths on the CPU) under x's device guard, with x contiguous, its storage types and its
// device's runner (Host or Cuda, as with_runner). Autocast is off inside: the loops' own
// GEMMs must return x's dtype, whose pointers the kernels read as T (a backward may run
// under autocast).
template <template <class, class> class Host, template <class, class> class Cuda, typename G>
auto with_layer_runner(const at::Tensor& x_, const c10::optional<at::Tensor>& lengths, const G& g) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const c10::DeviceGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  const at::Tensor len_cpu = opt(lengths);  // contiguous: host loops read it densely
  const at::Tensor len = len_cpu.defined() ? len_cpu.to(x.device()) : at::Tensor();
  return with_storage(x, [&](auto t, auto a) {
    return with_runner<decltype(t), decltype(a), Host, Cuda>(
        x, [&](const auto& runner) { return g(t, a, runner, x, len, len_cpu); });
  });
}

}  // namespace fused_rnn
