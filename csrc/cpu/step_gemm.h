// StepGemm: the per-step GEMM of a time loop, whose weight is the same for all T steps
// (shared by recurrence.cpp and variant_recurrence.cpp).
#pragma once

#include "aten.h"

#include <algorithm>
#include <cstdlib>
#include <type_traits>

// MKL's packed GEMM (exported by an MKL build of libtorch_cpu; weak, so a build without MKL
// still loads and falls back to at::mm). The weight of the per-step GEMM is the same for
// all T steps: packing it once saves re-packing it every step. LP64 ints, CBLAS enums as int.
extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
}

namespace fused_rnn {
namespace cpu {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

inline bool mkl_packed_available() {
  static const bool ok = cblas_sgemm_pack_get_size && cblas_sgemm_pack && cblas_sgemm_compute &&
                         !std::getenv("FUSED_RNN_NO_MKL_PACK");
  return ok;
}

// out [m, n] = a [m, k] @ op(w) (+ out if accumulate), op(w) = w^T ([n, k] stored) or w
// ([k, n] stored); the same w for every call, packed once for float when MKL is there.
template <typename T>
class StepGemm {
 public:
  StepGemm(const at::Tensor& w, bool transpose, int64_t m) : w_(w), transpose_(transpose), m_(m) {
    n_ = transpose ? w.size(0) : w.size(1);
    k_ = transpose ? w.size(1) : w.size(0);
    if constexpr (std::is_same_v<T, float>) {
      if (mkl_packed_available() && m > 0 && n_ > 0 && k_ > 0 &&
          std::max({m, n_, k_}) < (int64_t(1) << 31)) {
        const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, int(m), int(n_), int(k_));
        packed_ = at::empty({int64_t(bytes / sizeof(float) + 1)}, w.options());
        cblas_sgemm_pack(kRowMajor, kBMatrix, transpose ? kTrans : kNoTrans, int(m), int(n_),
                         int(k_), 1.0f, w.data_ptr<float>(), int(w.size(1)),
                         packed_.data_ptr<float>());
      }
    }
  }

  // a [m, k] contiguous rows; out [m, n] contiguous.
  void run(const at::Tensor& a, at::Tensor& out, bool accumulate) const {
    if constexpr (std::is_same_v<T, float>) {
      if (packed_.defined()) {
        cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, int(m_), int(n_), int(k_),
                            a.data_ptr<float>(), int(k_), packed_.data_ptr<float>(), int(k_),
                            accumulate ? 1.0f : 0.0f, out.data_ptr<float>(), int(n_));
        return;
      }
    }
    const at::Tensor b = transpose_ ? w_.t() : w_;
    if (accumulate) {
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
  }

 private:
  at::Tensor w_, packed_;
  bool transpose_;
  int64_t m_, n_ = 0, k_ = 0;
};

}  // namespace cpu
}  // namespace fused_rnn
