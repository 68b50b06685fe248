// Which time loop the cuda backend's recurrence runs for a layer: the whole-sequence kernels
// (recurrence_sequence.cuh) when a tile of its batch fits in a block's shared memory and
// there is no projection, else the per-step loop (recurrence_loop.h).
//
// FUSED_RNN_CUDA_SEQUENCE forces one: "0" the per-step loop, "1" the whole-sequence kernels
// (an error, saying why, where they do not take the layer); unset or empty: the plan. Read
// on every call, so that tests may switch it within one process.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <string>

#include "fused_rnn/recurrence_sequence.cuh"

namespace fused_rnn {
namespace stepwise {

// What the device allows a tile: smem_bytes of dynamic shared memory per block; want_rows
// rows per tile (fewer rows, more tiles: more multiprocessors busy; more rows: W_hh read
// from shared memory once for them all).
struct TileBudget {
  int64_t smem_bytes, want_rows;
};

// Rows per tile of the whole-sequence path, or 0 for the per-step loop; `why_not` says why
// when 0 (for the forced case's error).
inline int64_t plan_sequence(int mode, int64_t B, int64_t H, bool proj, int64_t elem_size,
                             const TileBudget& budget, std::string* why_not) {
  if (proj) {
    *why_not = "it has a projection (proj_size > 0), which the whole-sequence kernels do not take";
    return 0;
  }
  const int64_t rows = cuda::sequence_tile_rows(mode, B, H, elem_size, budget.smem_bytes, budget.want_rows);
  if (rows == 0) {
    *why_not = "a tile of one batch row with H = " + std::to_string(H) + " needs " +
               std::to_string(cuda::sequence_smem_bytes(mode, H, 1, elem_size)) +
               " bytes of shared memory, the device gives a block at most " +
               std::to_string(budget.smem_bytes);
  }
  return rows;
}

// plan_sequence's rows after FUSED_RNN_CUDA_SEQUENCE.
inline int64_t sequence_rows(int mode, int64_t B, int64_t H, bool proj, int64_t elem_size,
                             const TileBudget& budget) {
  const char* env = std::getenv("FUSED_RNN_CUDA_SEQUENCE");
  const std::string force = env ? env : "";
  TORCH_CHECK(force.empty() || force == "0" || force == "1",
              "fused_rnn: FUSED_RNN_CUDA_SEQUENCE must be 0 (per-step loop), 1 (whole-sequence "
              "kernels) or unset (choose), got '", force, "'");
  if (force == "0") return 0;
  std::string why_not;
  const int64_t rows = plan_sequence(mode, B, H, proj, elem_size, budget, &why_not);
  TORCH_CHECK(rows > 0 || force != "1", "fused_rnn: FUSED_RNN_CUDA_SEQUENCE=1, but the "
              "whole-sequence kernels do not take this layer: ", why_not);
  return rows;
}

}  // namespace stepwise
}  // namespace fused_rnn
