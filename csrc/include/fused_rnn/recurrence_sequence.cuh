// Whole-sequence (persistent) recurrence for small H: one launch runs every step of one layer
// and one direction, forward or backward, instead of a GEMM and a pointwise kernel per step
// (recurrence_step.cuh). No torch.
//
// One CUDA block owns a tile of `rows` batch rows and all H hidden units, so a step needs no
// other block's results and the time loop runs inside the block with no grid sync. W_hh sits
// in dynamic shared memory for the whole loop; what stays the caller's is as in the per-step
// path: gx = x W_ih^T before the loop, dh0's last GEMM and dx, dW_ih, dW_hh, db after it, and
// the saved layout. Per step, in the block:
//   forward   gh = h W_hh^T (h and W_hh from shared memory), then fwd_point for each (row, unit)
//   backward  dh_rec = da_h[t+1] W_hh, then bwd_point for each (row, unit)
// so the gate math, lengths, reverse rows and what is saved are the per-step path's own.
// No projection (the caller keeps the per-step path for proj_size > 0).
//
// The tile bodies are written against a Block (block.cuh): DeviceBlock in the kernels,
// HostBlock when the torch binding runs them on CPU tensors, which is how they are tested
// without a GPU. Shared memory, all of storage type T (sequence_smem_elems):
//   forward   W_hh^T [H, G*H] | h [rows, H]   | gh [rows, G*H]
//   backward  W_hh  [G*H, H]  | da_h [rows, G*H] | dh_rec [rows, H]
// Each layout makes consecutive threads read consecutive elements of W in their matvec.
#pragma once

#include <stdint.h>

#include "block.cuh"
#include "recurrence_step.cuh"

namespace fused_rnn {
namespace cuda {

// The device pass unrolls the per-row loops so that acc[] lives in registers; the host
// compiler (a plain C++ one, or nvcc's host pass) would warn about the pragma.
#if defined(__CUDA_ARCH__)
#define FUSED_RNN_UNROLL _Pragma("unroll")
#else
#define FUSED_RNN_UNROLL
#endif

constexpr int kSeqThreads = 256;
// Rows of a tile: a matvec thread keeps one accumulator per row, so W is read once per step
// for all of them; more rows cost registers.
constexpr int kSeqMaxRows = 4;
// Dynamic shared memory a block may opt in to on sm_80 (sm_90: 227 KiB). The host runner
// decides as an sm_80 device would.
constexpr int64_t kSeqSmemSm80 = 163 * 1024;

struct SeqShape {
  int64_t steps;           // time steps
  int64_t B;               // batch rows
  int64_t H;               // hidden units (= the state size: no projection)
  int64_t rows;            // rows per tile, 1..kSeqMaxRows: tile k owns rows [k rows, (k+1) rows)
  bool reverse;            // reverse direction
  const int64_t* lengths;  // [B] row lengths in [0, steps] (device memory), or nullptr
};

template <typename T, typename A = float>
struct SeqFwdArgs {
  SeqShape s;
  const T* gx;      // [steps, B, G*H] x W_ih^T, natural order, or nullptr
  const T* w_hh;    // [G*H, H]
  const T* b_ih;    // [G*H] or nullptr (as FwdStepArgs)
  const T* b_hh;    // [G*H] or nullptr
  T* hs;            // [S, B, H] states; hs[0] = h0 on entry. S = steps + 1 when all_states, else
                    // 2 (step t reads hs[t % 2], writes hs[(t + 1) % 2])
  A* cs;            // [S, B, H] LSTM cells as hs (cs[0] = c0), else nullptr
  T* y;             // [steps, B, H] output, natural order
  T* acts;          // [steps, B, 4H] saved activations (LSTM, GRU), or nullptr
  bool all_states;  // keep every state (training) or two (inference)
};

template <typename T, typename A = float>
struct SeqBwdArgs {
  SeqShape s;
  const T* w_hh;  // [G*H, H]
  const T* dy;    // [steps, B, H] output gradient, natural order, or nullptr
  A* dh;          // [B, H] in: dL/dh_n (zeros when absent); out: as BwdStepArgs::dh after step 0
  A* dc;          // [B, H] LSTM: in dL/dc_n, out dL/dc0; else nullptr
  const T* acts;  // [steps, B, 4H] saved activations (LSTM, GRU), or nullptr (RNN)
  const A* cs;    // [steps + 1, B, H] LSTM cells, or nullptr
  const T* hs;    // [steps + 1, B, H] states
  T* da;          // [steps, B, G*H] gate gradients, input side (LSTM: may be acts itself)
  T* da_h;        // [steps, B, G*H] GRU hidden side, or nullptr (LSTM, RNN: da is both)
};

// Shared memory of a tile, in elements of T (the same for forward and backward).
FUSED_RNN_HD int64_t sequence_smem_elems(int mode, int64_t H, int64_t rows) {
  const int64_t GH = int64_t(gate_count(mode)) * H;
  return GH * H + rows * (GH + H);
}

inline int64_t sequence_smem_bytes(int mode, int64_t H, int64_t rows, int64_t elem_size) {
  return sequence_smem_elems(mode, H, rows) * elem_size;
}

// Rows per tile for B rows: `want` (at least 1, at most kSeqMaxRows, B), fewer until the tile
// fits in smem_limit bytes; 0 when a single row does not fit (the caller keeps the per-step
// path).
inline int64_t sequence_tile_rows(int mode, int64_t B, int64_t H, int64_t elem_size,
                                  int64_t smem_limit, int64_t want) {
  int64_t rows = want < 1 ? 1 : want > kSeqMaxRows ? kSeqMaxRows : want;
  if (B > 0 && rows > B) rows = B;
  while (rows > 0 && sequence_smem_bytes(mode, H, rows, elem_size) > smem_limit) --rows;
  return rows;
}

inline int64_t sequence_tiles(const SeqShape& s) { return (s.B + s.rows - 1) / s.rows; }

// out[r, c] = sum_k x[r, k] w[k, c] for rows r < rows <= kSeqMaxRows and columns c < N:
// x [rows, K], w [K, N] (shared memory), out [rows, N], the block's threads over the columns
// (consecutive threads, consecutive elements of w). The matvec of every whole-sequence step.
template <typename T, typename A, typename Block>
FUSED_RNN_HD void rows_matvec(const Block& blk, const T* w, const T* x, int64_t rows, int64_t K,
                              int64_t N, T* out) {
  for (int64_t c = blk.rank(); c < N; c += blk.size()) {
    A acc[kSeqMaxRows] = {};
    for (int64_t k = 0; k < K; ++k) {
      const A wv = to_acc(w[k * N + c]);
FUSED_RNN_UNROLL
      for (int r = 0; r < kSeqMaxRows; ++r) {
        if (r < rows) acc[r] += A(to_acc(x[r * K + k])) * wv;
      }
    }
FUSED_RNN_UNROLL
    for (int r = 0; r < kSeqMaxRows; ++r) {
      if (r < rows) put(out + r * N + c, acc[r]);
    }
  }
}

// ---------------------------------------------------------------- one tile, all steps

// Forward of tile `tile`; smem: sequence_smem_elems(MODE, H, rows) elements of T.
template <int MODE, typename T, typename A, typename Block>
FUSED_RNN_HD void sequence_fwd_tile(const SeqFwdArgs<T, A>& a, int64_t tile, T* smem,
                                    const Block& blk) {
  const SeqShape& s = a.s;
  const int64_t H = s.H, GH = int64_t(gate_count(MODE)) * H, b0 = tile * s.rows;
  const int64_t rows = s.B - b0 < s.rows ? s.B - b0 : s.rows, plane = s.B * H;
  T* wt = smem;            // [H, G*H]
  T* h = wt + GH * H;      // [rows, H]
  T* gh = h + s.rows * H;  // [rows, G*H]
  for (int64_t e = blk.rank(); e < GH * H; e += blk.size()) wt[(e % H) * GH + e / H] = a.w_hh[e];
  for (int64_t e = blk.rank(); e < rows * H; e += blk.size()) h[e] = a.hs[b0 * H + e];
  blk.sync();
  for (int64_t t = 0; t < s.steps; ++t) {
    rows_matvec<T, A>(blk, wt, h, rows, H, GH, gh);
    blk.sync();
    // The step as the per-step path has it, seen from the tile: every row-indexed pointer
    // starts at row b0, so local row r is row b0 + r (B stays the stride of [steps, B, .]).
    const int64_t sp = a.all_states ? t : t % 2, sn = a.all_states ? t + 1 : (t + 1) % 2;
    FwdStepArgs<T, A> p{};
    p.s = StepShape{s.steps, s.B, H, H, t, s.reverse, s.lengths ? s.lengths + b0 : nullptr};
    p.gx = a.gx ? a.gx + b0 * GH : nullptr;
    p.gh = gh;
    p.b_ih = a.b_ih;
    p.b_hh = a.b_hh;
    p.h_prev = a.hs + sp * plane + b0 * H;
    p.h_new = a.hs + sn * plane + b0 * H;
    p.c_prev = MODE == kLSTM ? a.cs + sp * plane + b0 * H : nullptr;
    p.c_new = MODE == kLSTM ? a.cs + sn * plane + b0 * H : nullptr;
    p.y = a.y + b0 * H;
    p.acts = a.acts ? a.acts + (t * s.B + b0) * 4 * H : nullptr;
    p.proj = false;
    for (int64_t e = blk.rank(); e < rows * H; e += blk.size()) {
      fwd_point<MODE>(p, e / H, e % H);
      h[e] = p.h_new[e];  // this thread's own write: no barrier needed to read it back
    }
    blk.sync();
  }
}

// Backward of tile `tile`, the steps in reverse; smem as forward's.
template <int MODE, typename T, typename A, typename Block>
FUSED_RNN_HD void sequence_bwd_tile(const SeqBwdArgs<T, A>& a, int64_t tile, T* smem,
                                    const Block& blk) {
  const SeqShape& s = a.s;
  const int64_t G = gate_count(MODE), H = s.H, GH = G * H, b0 = tile * s.rows;
  const int64_t rows = s.B - b0 < s.rows ? s.B - b0 : s.rows;
  T* w = smem;                // [G*H, H]
  T* dah = w + GH * H;        // [rows, G*H] hidden-side gate gradients of the step after
  T* dhr = dah + s.rows * GH; // [rows, H] dah W_hh
  for (int64_t e = blk.rank(); e < GH * H; e += blk.size()) w[e] = a.w_hh[e];
  blk.sync();
  for (int64_t t = s.steps - 1; t >= 0; --t) {
    const bool last = t == s.steps - 1;
    if (!last) {
      rows_matvec<T, A>(blk, w, dah, rows, GH, H, dhr);
      blk.sync();
    }
    // As forward: the step's arguments from row b0 on.
    const int64_t row0 = t * s.B + b0;
    BwdStepArgs<T, A> p{};
    p.s = StepShape{s.steps, s.B, H, H, t, s.reverse, s.lengths ? s.lengths + b0 : nullptr};
    p.dy = a.dy ? a.dy + b0 * H : nullptr;
    p.dh_rec = last ? nullptr : dhr;
    p.dh = a.dh + b0 * H;
    p.dc = MODE == kLSTM ? a.dc + b0 * H : nullptr;
    p.gy = nullptr;
    p.acts = a.acts ? a.acts + row0 * 4 * H : nullptr;
    p.c_prev = MODE == kLSTM ? a.cs + row0 * H : nullptr;
    p.c_new = MODE == kLSTM ? a.cs + (row0 + s.B) * H : nullptr;
    p.h_prev = a.hs + row0 * H;
    p.h_new = a.hs + (row0 + s.B) * H;
    p.da = a.da + row0 * GH;
    p.da_h = a.da_h ? a.da_h + row0 * GH : nullptr;
    const T* side = p.da_h ? p.da_h : p.da;
    for (int64_t e = blk.rank(); e < rows * H; e += blk.size()) {
      const int64_t r = e / H, j = e % H;
      bwd_point<MODE>(p, r, j);
      for (int64_t k = 0; k < G; ++k) dah[r * GH + k * H + j] = side[r * GH + k * H + j];
    }
    blk.sync();
  }
}

// ---------------------------------------------------------------- kernels and launchers
#if defined(__CUDACC__)

// Grid: one block per tile. __align__: the tile's buffers may be double.
template <int MODE, typename T, typename A>
__global__ void __launch_bounds__(kSeqThreads, 1) recurrence_sequence_fwd_kernel(const SeqFwdArgs<T, A> a) {
  extern __shared__ __align__(16) unsigned char seq_smem[];
  sequence_fwd_tile<MODE>(a, blockIdx.x, reinterpret_cast<T*>(seq_smem), DeviceBlock<A>{nullptr});
}

template <int MODE, typename T, typename A>
__global__ void __launch_bounds__(kSeqThreads, 1) recurrence_sequence_bwd_kernel(const SeqBwdArgs<T, A> a) {
  extern __shared__ __align__(16) unsigned char seq_smem[];
  sequence_bwd_tile<MODE>(a, blockIdx.x, reinterpret_cast<T*>(seq_smem), DeviceBlock<A>{nullptr});
}

// Opts the kernel in to `bytes` of dynamic shared memory (past the default 48 KiB), then
// launches one block per tile. The device refuses more than its opt-in limit
// (cudaErrorInvalidValue): sequence_device_limits tells the caller that limit beforehand.
template <typename Kernel, typename Args>
cudaError_t launch_sequence(Kernel kernel, const Args& a, int64_t bytes, cudaStream_t stream) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (err != cudaSuccess) return err;
  kernel<<<unsigned(sequence_tiles(a.s)), kSeqThreads, size_t(bytes), stream>>>(a);
  return cudaGetLastError();
}

template <typename T, typename A = float>
cudaError_t recurrence_sequence_fwd(int mode, const SeqFwdArgs<T, A>& a, cudaStream_t stream) {
  if (a.s.B == 0 || a.s.H == 0 || a.s.steps == 0) return cudaSuccess;
  if (a.s.rows < 1 || a.s.rows > kSeqMaxRows || (mode == kLSTM && a.cs == nullptr)) return cudaErrorInvalidValue;
  const int64_t bytes = sequence_smem_bytes(mode, a.s.H, a.s.rows, sizeof(T));
  cudaError_t err = cudaErrorInvalidValue;
  with_mode(mode, [&](auto m) {
    err = launch_sequence(recurrence_sequence_fwd_kernel<decltype(m)::value, T, A>, a, bytes, stream);
  });
  return err;
}

template <typename T, typename A = float>
cudaError_t recurrence_sequence_bwd(int mode, const SeqBwdArgs<T, A>& a, cudaStream_t stream) {
  if (a.s.B == 0 || a.s.H == 0 || a.s.steps == 0) return cudaSuccess;
  if (a.s.rows < 1 || a.s.rows > kSeqMaxRows) return cudaErrorInvalidValue;
  const int64_t bytes = sequence_smem_bytes(mode, a.s.H, a.s.rows, sizeof(T));
  cudaError_t err = cudaErrorInvalidValue;
  with_mode(mode, [&](auto m) {
    err = launch_sequence(recurrence_sequence_bwd_kernel<decltype(m)::value, T, A>, a, bytes, stream);
  });
  return err;
}

#endif  // __CUDACC__

}  // namespace cuda
}  // namespace fused_rnn
