// Which time loop the cuda backend's recurrence runs for a layer: the single-block
// whole-sequence kernels (recurrence_sequence.cuh) when a tile of its batch and all of W_hh
// fit in one block's shared memory; else the per-step loop (recurrence_loop.h). Layers with
// a projection always take the per-step loop. The multi-block kernels (recurrence_grid.cuh:
// the units split over the blocks the device holds at once, a grid barrier per step) run
// only when asked for: they have not yet run on a GPU against the per-step loop's cuBLAS
// GEMMs, whose speed at large H they must beat (DESIGN: measure both, keep what wins), and
// a block owning few units leaves most of its threads idle.
//
// FUSED_RNN_CUDA_SEQUENCE forces one: "0" the per-step loop, "1" the single-block kernels,
// "grid" the multi-block kernels (an error, saying why, where the forced path does not take
// the layer); unset or empty: the plan above. Read on every call, so that tests may switch
// it within one process.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <string>

#include "fused_rnn/recurrence_grid.cuh"
#include "fused_rnn/recurrence_sequence.cuh"

namespace fused_rnn {
namespace stepwise {

// What the device allows: smem_bytes of dynamic shared memory per block; want_rows rows per
// tile of the single-block path (fewer rows, more tiles: more multiprocessors busy; more rows:
// W_hh read from shared memory once for them all); max_blocks blocks resident at once (the
// multi-block path's grid); grid_rows rows per chunk of the multi-block path.
struct TileBudget {
  int64_t smem_bytes, want_rows, max_blocks, grid_rows;
};

// The loop of a layer: rows == 0 the per-step loop; else units == 0 the single-block
// whole-sequence path, tiles of `rows` batch rows; else the multi-block one, `units` hidden
// units a block, the batch in chunks of `rows` rows.
struct SequencePlan {
  int64_t rows = 0, units = 0;
  bool per_step() const { return rows == 0; }
  bool single_block() const { return rows > 0 && units == 0; }
  bool grid() const { return rows > 0 && units > 0; }
};

// Rows per tile of the single-block path, or 0; `why_not` says why when 0 (for the forced
// case's error).
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

// The multi-block path's plan, or the per-step loop's ({}) with `why_not`.
inline SequencePlan plan_grid(int mode, int64_t B, int64_t H, bool proj, int64_t elem_size,
                              const TileBudget& budget, std::string* why_not) {
  if (proj) {
    *why_not = "it has a projection (proj_size > 0), which the whole-sequence kernels do not take";
    return {};
  }
  SequencePlan plan;
  plan.units = cuda::grid_units(H, budget.max_blocks);
  plan.rows = cuda::grid_chunk_rows(mode, B, H, plan.units, elem_size, budget.smem_bytes, budget.grid_rows);
  if (plan.rows == 0) {
    *why_not = "H = " + std::to_string(H) + " over at most " + std::to_string(budget.max_blocks) +
               " resident blocks is " + std::to_string(plan.units) + " units a block, whose slice "
               "of W_hh and one batch row need " +
               std::to_string(cuda::grid_smem_bytes(mode, H, plan.units, 1, elem_size)) +
               " bytes of shared memory, the device gives a block at most " +
               std::to_string(budget.smem_bytes);
    return {};
  }
  return plan;
}

// The plan after FUSED_RNN_CUDA_SEQUENCE.
inline SequencePlan sequence_plan(int mode, int64_t B, int64_t H, bool proj, int64_t elem_size,
                                  const TileBudget& budget) {
  const char* env = std::getenv("FUSED_RNN_CUDA_SEQUENCE");
  const std::string force = env ? env : "";
  TORCH_CHECK(force.empty() || force == "0" || force == "1" || force == "grid",
              "fused_rnn: FUSED_RNN_CUDA_SEQUENCE must be 0 (per-step loop), 1 (single-block "
              "whole-sequence kernels), grid (multi-block whole-sequence kernels) or unset "
              "(choose), got '", force, "'");
  if (force == "0") return {};
  std::string why_not;
  if (force != "grid") {
    SequencePlan plan;
    plan.rows = plan_sequence(mode, B, H, proj, elem_size, budget, &why_not);
    TORCH_CHECK(plan.rows > 0 || force != "1", "fused_rnn: FUSED_RNN_CUDA_SEQUENCE=1, but the "
                "single-block whole-sequence kernels do not take this layer: ", why_not);
    return plan;  // the per-step loop where rows == 0
  }
  const SequencePlan plan = plan_grid(mode, B, H, proj, elem_size, budget, &why_not);
  TORCH_CHECK(!plan.per_step() || force != "grid", "fused_rnn: FUSED_RNN_CUDA_SEQUENCE=grid, but "
              "the multi-block whole-sequence kernels do not take this layer: ", why_not);
  return plan;
}

}  // namespace stepwise
}  // namespace fused_rnn
