// Multi-block whole-sequence recurrence: one cooperative launch runs every step of one layer
// and one direction where W_hh does not fit in one block (recurrence_sequence.cuh), by
// splitting the hidden units over several blocks, all co-resident, with a grid-wide barrier
// per step. No torch.
//
// Block k owns units [k U, k U + n) (U = `units` per block; the last block may have fewer) of
// every batch row, and keeps in dynamic shared memory the slice of W_hh it needs:
//   forward   the rows of its units' gates   W_hh[g H + u, :]   as W^T [H, G*n]
//   backward  the columns of its units       W_hh[:, u]         as     [G*H, n]
// (dh for unit u is a sum over every gate row of da_h[row] W_hh[row, u]). Per step, in each
// block, the batch in chunks of `rows` rows (SeqShape::rows):
//   forward   stage the chunk of h_prev [rows, H] (all units, from global: every block wrote
//             its units the step before), gh = h W^T for its G*n gate columns, then
//             fwd_point_with for each (row, own unit); new h, c, y, acts to global memory
//   backward  stage the chunk of da_h[t+1] [rows, G*H], dh_rec = da_h W for its n units, then
//             bwd_point_with for each (row, own unit); da (and GRU da_h), dh, dc to global
// then the grid barrier: the next step reads what every block wrote. One barrier a step is
// enough: a step reads one buffer (hs[t], or da_h[t+1]) and writes another (hs[t+1], da[t]);
// with inference's ping-pong states the barrier of step t also orders step t's reads of
// hs[t % 2] before step t+1's writes to it. Data other blocks wrote is read with load_l2
// (ld.global.cg): an SM's L1 is not coherent with the others' stores, and may hold an old
// copy of the line (ping-pong states; LSTM's da written over acts, whose lines were read).
// What a thread reads of its own units (c, dh, dc, GRU's h) it wrote itself at the step
// before: the (row, unit) -> thread map is the same every step.
//
// Everything else is the single-block path's: the arguments (SeqFwdArgs, SeqBwdArgs), the
// gate math, lengths, reverse rows, the saved layout, storage-type rounding of gh and dh_rec.
// The per-step work of a block is a FUSED_RNN_HD function of a Block (block.cuh), so the host
// runs the same code as a "grid" of blocks run one after another between barriers (the
// binding's HostPoints): for each step, every block's step, then the next step.
//
// Grid barrier: cooperative_groups::this_grid().sync() under cudaLaunchCooperativeKernel,
// which CUDA 12+ compiles without relocatable device code. The launcher refuses (an error,
// never a hang) when the blocks cannot all be resident: cudaOccupancyMaxActiveBlocksPerMultiprocessor
// times the multiprocessor count.
#pragma once

#include <stdint.h>

#include "block.cuh"
#include "recurrence_sequence.cuh"
#include "recurrence_step.cuh"

#if defined(__CUDACC__)
#include <cooperative_groups.h>
#endif

namespace fused_rnn {
namespace cuda {

// *p, past this SM's L1 on the device (see the header comment).
template <typename T>
FUSED_RNN_HD T load_l2(const T* p) {
#if defined(__CUDA_ARCH__)
  return __ldcg(p);
#else
  return *p;
#endif
}

// Blocks for H units, `units` a block.
FUSED_RNN_HD int64_t grid_blocks(int64_t H, int64_t units) { return (H + units - 1) / units; }

// Shared memory of a block, in elements of T: its W_hh slice plus a chunk's staging buffers.
// Backward's is the larger (G H + units >= H + G units) and sizes both.
FUSED_RNN_HD int64_t grid_smem_elems(int mode, int64_t H, int64_t units, int64_t rows) {
  const int64_t GH = int64_t(gate_count(mode)) * H;
  return GH * units + rows * (GH + units);
}

inline int64_t grid_smem_bytes(int mode, int64_t H, int64_t units, int64_t rows, int64_t elem_size) {
  return grid_smem_elems(mode, H, units, rows) * elem_size;
}

// Units per block for H units on at most max_blocks co-resident blocks: as many blocks as
// allowed (more multiprocessors, a smaller slice each), then as even as ceil makes them.
inline int64_t grid_units(int64_t H, int64_t max_blocks) {
  const int64_t blocks = max_blocks < 1 ? 1 : max_blocks > H ? H : max_blocks;
  return blocks < 1 ? 1 : (H + blocks - 1) / blocks;
}

// Rows per chunk: `want` (1..kSeqMaxRows, at most B), fewer until the block fits in
// smem_limit bytes; 0 when one row does not fit.
inline int64_t grid_chunk_rows(int mode, int64_t B, int64_t H, int64_t units, int64_t elem_size,
                               int64_t smem_limit, int64_t want) {
  int64_t rows = want < 1 ? 1 : want > kSeqMaxRows ? kSeqMaxRows : want;
  if (B > 0 && rows > B) rows = B;
  while (rows > 0 && grid_smem_bytes(mode, H, units, rows, elem_size) > smem_limit) --rows;
  return rows;
}

// ---------------------------------------------------------------- one block, one step

// The units of block k: [u0, u0 + n).
struct GridSlice {
  int64_t u0, n;
  FUSED_RNN_HD GridSlice(int64_t H, int64_t units, int64_t k)
      : u0(k * units), n(H - k * units < units ? H - k * units : units) {}
};

// Forward, before the first step: block k's W^T slice [H, G*n] into smem
// (grid_smem_elems(MODE, H, units, rows) elements of T).
template <int MODE, typename T, typename A, typename Block>
FUSED_RNN_HD void grid_fwd_load(const SeqFwdArgs<T, A>& a, int64_t units, int64_t k, T* smem,
                                const Block& blk) {
  const int64_t H = a.s.H, G = gate_count(MODE);
  const GridSlice sl(H, units, k);
  const int64_t Gn = G * sl.n;
  // e runs over the slice's rows of W_hh in memory order: consecutive threads, consecutive reads.
  for (int64_t e = blk.rank(); e < Gn * H; e += blk.size()) {
    const int64_t c = e / H, kk = e % H;  // slice column c = g n + jl
    smem[kk * Gn + c] = a.w_hh[((c / sl.n) * H + sl.u0 + c % sl.n) * H + kk];
  }
  blk.sync();
}

// Forward step t of block k; every block's step t - 1 is complete (the grid barrier).
template <int MODE, typename T, typename A, typename Block>
FUSED_RNN_HD void grid_fwd_step(const SeqFwdArgs<T, A>& a, int64_t units, int64_t k, int64_t t,
                                T* smem, const Block& blk) {
  const SeqShape& s = a.s;
  const int64_t H = s.H, G = gate_count(MODE), GH = G * H, plane = s.B * H;
  const GridSlice sl(H, units, k);
  const int64_t n = sl.n, Gn = G * n;
  T* wt = smem;            // [H, G*n]
  T* h = wt + GH * units;  // [rows, H]   the chunk's h_prev
  T* gh = h + s.rows * H;  // [rows, G*n] its h_prev W^T, this block's columns
  const int64_t sp = a.all_states ? t : t % 2, sn = a.all_states ? t + 1 : (t + 1) % 2;
  // The step as the per-step path has it, with global rows and units; gh from smem.
  FwdStepArgs<T, A> p{};
  p.s = StepShape{s.steps, s.B, H, H, t, s.reverse, s.lengths};
  p.gx = a.gx;
  p.gh = nullptr;
  p.b_ih = a.b_ih;
  p.b_hh = a.b_hh;
  p.h_prev = a.hs + sp * plane;
  p.h_new = a.hs + sn * plane;
  p.c_prev = MODE == kLSTM ? a.cs + sp * plane : nullptr;
  p.c_new = MODE == kLSTM ? a.cs + sn * plane : nullptr;
  p.y = a.y;
  p.acts = a.acts ? a.acts + t * s.B * 4 * H : nullptr;
  p.proj = false;
  for (int64_t r0 = 0; r0 < s.B; r0 += s.rows) {
    const int64_t rows = s.B - r0 < s.rows ? s.B - r0 : s.rows;
    // No barrier is needed before this load: the chunk before finished reading h (the barrier
    // after its matvec) and its pointwise pass reads only gh.
    for (int64_t e = blk.rank(); e < rows * H; e += blk.size()) h[e] = load_l2(p.h_prev + r0 * H + e);
    blk.sync();
    rows_matvec<T, A>(blk, wt, h, rows, H, Gn, gh);
    blk.sync();
    for (int64_t e = blk.rank(); e < rows * n; e += blk.size()) {
      const int64_t r = e / n, jl = e % n;
      const T* g = gh + r * Gn + jl;  // gate q at q n
      fwd_point_with<MODE>(p, r0 + r, sl.u0 + jl, [&](int q) { return to_acc(g[q * n]); });
    }
  }
}

// Backward, before the last step: block k's W_hh columns [G*H, n] into smem.
template <int MODE, typename T, typename A, typename Block>
FUSED_RNN_HD void grid_bwd_load(const SeqBwdArgs<T, A>& a, int64_t units, int64_t k, T* smem,
                                const Block& blk) {
  const int64_t H = a.s.H, GH = int64_t(gate_count(MODE)) * H;
  const GridSlice sl(H, units, k);
  for (int64_t e = blk.rank(); e < GH * sl.n; e += blk.size()) {
    smem[e] = a.w_hh[(e / sl.n) * H + sl.u0 + e % sl.n];
  }
  blk.sync();
}

// Backward step t of block k (t from steps - 1 down); every block's step t + 1 is complete.
template <int MODE, typename T, typename A, typename Block>
FUSED_RNN_HD void grid_bwd_step(const SeqBwdArgs<T, A>& a, int64_t units, int64_t k, int64_t t,
                                T* smem, const Block& blk) {
  const SeqShape& s = a.s;
  const int64_t H = s.H, GH = int64_t(gate_count(MODE)) * H;
  const GridSlice sl(H, units, k);
  const int64_t n = sl.n;
  T* w = smem;                  // [G*H, n]
  T* dah = w + GH * units;      // [rows, G*H] the chunk's da_h[t+1]
  T* dhr = dah + s.rows * GH;   // [rows, n]   its da_h W, this block's units
  const bool last = t == s.steps - 1;
  const int64_t row0 = t * s.B;
  BwdStepArgs<T, A> p{};
  p.s = StepShape{s.steps, s.B, H, H, t, s.reverse, s.lengths};
  p.dy = a.dy;
  p.dh_rec = nullptr;  // given to bwd_point_with from dhr
  p.dh = a.dh;
  p.dc = MODE == kLSTM ? a.dc : nullptr;
  p.gy = nullptr;
  p.acts = a.acts ? a.acts + row0 * 4 * H : nullptr;
  p.c_prev = MODE == kLSTM ? a.cs + row0 * H : nullptr;
  p.c_new = MODE == kLSTM ? a.cs + (row0 + s.B) * H : nullptr;
  p.h_prev = a.hs + row0 * H;
  p.h_new = a.hs + (row0 + s.B) * H;
  p.da = a.da + row0 * GH;
  p.da_h = a.da_h ? a.da_h + row0 * GH : nullptr;
  // The hidden side of step t + 1: da_h (GRU) or da itself (LSTM, RNN).
  const T* next = (a.da_h ? a.da_h : a.da) + (row0 + s.B) * GH;
  for (int64_t r0 = 0; r0 < s.B; r0 += s.rows) {
    const int64_t rows = s.B - r0 < s.rows ? s.B - r0 : s.rows;
    if (!last) {
      // As forward: the chunk before is past its matvec, its pointwise pass reads only dhr.
      for (int64_t e = blk.rank(); e < rows * GH; e += blk.size()) dah[e] = load_l2(next + r0 * GH + e);
      blk.sync();
      rows_matvec<T, A>(blk, w, dah, rows, GH, n, dhr);
      blk.sync();
    }
    for (int64_t e = blk.rank(); e < rows * n; e += blk.size()) {
      const int64_t r = e / n, jl = e % n;
      bwd_point_with<MODE>(p, r0 + r, sl.u0 + jl, [&] { return last ? A(0) : A(to_acc(dhr[r * n + jl])); });
    }
  }
}

// ---------------------------------------------------------------- kernels and launchers
#if defined(__CUDACC__)

// Grid: grid_blocks(H, units) blocks, all co-resident (cooperative launch).
template <int MODE, typename T, typename A>
__global__ void __launch_bounds__(kSeqThreads, 1) recurrence_grid_fwd_kernel(const SeqFwdArgs<T, A> a, const int64_t units) {
  extern __shared__ __align__(16) unsigned char seq_smem[];
  T* smem = reinterpret_cast<T*>(seq_smem);
  const DeviceBlock<A> blk{nullptr};
  grid_fwd_load<MODE>(a, units, blockIdx.x, smem, blk);
  for (int64_t t = 0; t < a.s.steps; ++t) {
    grid_fwd_step<MODE>(a, units, blockIdx.x, t, smem, blk);
    cooperative_groups::this_grid().sync();
  }
}

template <int MODE, typename T, typename A>
__global__ void __launch_bounds__(kSeqThreads, 1) recurrence_grid_bwd_kernel(const SeqBwdArgs<T, A> a, const int64_t units) {
  extern __shared__ __align__(16) unsigned char seq_smem[];
  T* smem = reinterpret_cast<T*>(seq_smem);
  const DeviceBlock<A> blk{nullptr};
  grid_bwd_load<MODE>(a, units, blockIdx.x, smem, blk);
  for (int64_t t = a.s.steps - 1; t >= 0; --t) {
    grid_bwd_step<MODE>(a, units, blockIdx.x, t, smem, blk);
    cooperative_groups::this_grid().sync();
  }
}

// Opts the kernel in to `bytes` of dynamic shared memory, checks that every block can be
// resident at once (else cudaErrorCooperativeLaunchTooLarge, before launching: a grid
// barrier over blocks that never start would hang), then launches cooperatively.
template <typename Kernel, typename Args>
cudaError_t launch_grid(Kernel kernel, const Args& a, int64_t units, int64_t bytes, cudaStream_t stream) {
  int device = 0, coop = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kSeqThreads, size_t(bytes));
  if (err != cudaSuccess) return err;
  if (!coop) return cudaErrorNotSupported;
  const int64_t blocks = grid_blocks(a.s.H, units);
  if (blocks > int64_t(per_sm) * sms) return cudaErrorCooperativeLaunchTooLarge;
  Args args = a;
  int64_t u = units;
  void* params[] = {&args, &u};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(unsigned(blocks)),
                                     dim3(kSeqThreads), params, size_t(bytes), stream);
}

template <typename T, typename A = float>
cudaError_t recurrence_grid_fwd(int mode, const SeqFwdArgs<T, A>& a, int64_t units, cudaStream_t stream) {
  if (a.s.B == 0 || a.s.H == 0 || a.s.steps == 0) return cudaSuccess;
  if (a.s.rows < 1 || a.s.rows > kSeqMaxRows || units < 1 || (mode == kLSTM && a.cs == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const int64_t bytes = grid_smem_bytes(mode, a.s.H, units, a.s.rows, sizeof(T));
  cudaError_t err = cudaErrorInvalidValue;
  with_mode(mode, [&](auto m) {
    err = launch_grid(recurrence_grid_fwd_kernel<decltype(m)::value, T, A>, a, units, bytes, stream);
  });
  return err;
}

template <typename T, typename A = float>
cudaError_t recurrence_grid_bwd(int mode, const SeqBwdArgs<T, A>& a, int64_t units, cudaStream_t stream) {
  if (a.s.B == 0 || a.s.H == 0 || a.s.steps == 0) return cudaSuccess;
  if (a.s.rows < 1 || a.s.rows > kSeqMaxRows || units < 1) return cudaErrorInvalidValue;
  const int64_t bytes = grid_smem_bytes(mode, a.s.H, units, a.s.rows, sizeof(T));
  cudaError_t err = cudaErrorInvalidValue;
  with_mode(mode, [&](auto m) {
    err = launch_grid(recurrence_grid_bwd_kernel<decltype(m)::value, T, A>, a, units, bytes, stream);
  });
  return err;
}

#endif  // __CUDACC__

}  // namespace cuda
}  // namespace fused_rnn
