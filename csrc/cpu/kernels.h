// Fused step kernels of the recurrence (LSTM, GRU, RNN tanh/relu), forward and backward,
// over raw pointers: no tensors, no torch. The time loops, the packing of the weights and
// the all-steps GEMMs live in recurrence.cpp.
//
// A fused step is a register-blocked GEMM whose epilogue is the gate math: a tile of MR
// batch rows x one panel of hidden units accumulates x_t W_ih^T + h W_hh^T in vector
// registers and turns it into states at once, so no gate pre-activation goes to memory. The work of a step is split into items
// (panel, row block), contiguous in panel order so that each thread keeps its own panels
// of the weights in its cache across steps.
//
// Row b is active at loop step t when t < L_b (L_b = lengths[b], or T without lengths). Its
// natural time position is pos(t, b): t going forward; in reverse L_b - 1 - t while active,
// else t (each row reversed within its own length).
//
// The same source (kernels_impl.h) is compiled once per CPU capability (default, AVX2,
// AVX512: cap_*.cpp) and the driver picks a table at run time.
#pragma once

#include <cstdint>

namespace fused_rnn {
namespace cpu {

enum Mode : int64_t { kLSTM = 0, kGRU = 1, kRNN_TANH = 2, kRNN_RELU = 3 };

inline int64_t gate_count(int64_t mode) { return mode == kLSTM ? 4 : mode == kGRU ? 3 : 1; }

// Columns of the saved activations per row: LSTM i,f,g,o; GRU r,z,n,hn; RNN none (h' is kept).
inline int64_t act_count(int64_t mode) { return mode == kLSTM || mode == kGRU ? 4 : 0; }

// Sizes and lengths shared by the forward and backward steps.
struct StepShape {
  int64_t T;               // steps
  int64_t B;               // batch rows
  int64_t H;               // hidden size
  int64_t P;               // state size: proj_size with an LSTM projection, else H
  int64_t t;               // loop step
  bool reverse;            // reverse direction
  const int64_t* lengths;  // [B] row lengths in [0, T], or nullptr (all T)

  int64_t length(int64_t b) const { return lengths ? lengths[b] : T; }
  bool active(int64_t b) const { return t < length(b); }
  int64_t pos(int64_t b) const {
    const int64_t L = length(b);
    return reverse && t < L ? L - 1 - t : t;
  }
};

// How a fused step is tiled: `panels` panels of `units` hidden units (the last one padded),
// `row_blocks` blocks of at most `rows` batch rows; items = panels * row_blocks. The packed
// weights of a panel are [K][vectors] (see recurrence.cpp's packing).
struct TilePlan {
  int64_t units;
  int64_t panels;
  int64_t rows;
  int64_t row_blocks;
  int64_t gates;  // gates per panel: G in the forward, 1 in the backward
  int64_t items() const { return panels * row_blocks; }
};

// The batch rows a fused step's tiles cover: order[0, n), or 0..n-1 without an order. With
// lengths the driver lists the rows longest first, so that the rows still active at a step
// are a prefix (n of them) and finished rows cost no GEMM work; it carries those itself.
struct ActiveRows {
  const int64_t* order = nullptr;  // [B] or nullptr
  int64_t n = 0;
  int64_t operator[](int64_t i) const { return order ? order[i] : i; }
};

template <typename T>
struct FwdStep {
  StepShape s;
  TilePlan plan;
  const T* w;       // packed [W_ih | W_hh]: [panels, I + P, G, units]; with gi, W_hh only
  const T* x;       // [T, B, I] input, natural time order
  int64_t I;        // input size
  const T* gi;      // [T, B, G*H] x W_ih^T of all steps, natural time order, or nullptr: the
                    // step then computes x_t W_ih^T itself
  const T* gh = nullptr;  // [B, G*H] h_prev W_hh^T, or nullptr: the step computes it itself (with
                    // gh, gi is given too and the tiles run no GEMM, only the gate math)
  const T* bias;    // [G*H] b_ih + b_hh (GRU: b_ih + [b_hr, b_hz, 0]), or nullptr
  const T* b_hn;    // [H] GRU's b_hn (stays inside the reset product), or nullptr
  const T* h_prev;  // [B, P] state before the step
  T* h_new;         // [B, H] state after the step; with a projection, o*tanh(c') before W_hr
  const T* c_prev;  // [B, H] LSTM cell before the step
  T* c_new;         // [B, H] LSTM cell after the step
  T* y;             // [T, B, P] output, natural time order; nullptr with a projection
  T* acts;          // [B, A] saved activations of this step (A = act_count), or nullptr
  bool proj;        // LSTM with projection: h_new receives o*tanh(c'), zero on inactive rows
  ActiveRows rows;  // the batch rows the tiles cover
  // bf16 pair GEMM (bf16_pairs_fwd(), CPUs with AVX512-BF16; float only): the GEMM's left
  // operands are x as bf16 [T, B, I] and the state before the step as bf16 [B, P], read as
  // pairs of consecutive k; w packed in pairs (recurrence.cpp's pack_pairs); the step also
  // writes the new state rounded to bf16, the next step's operand, and the saved activations
  // rounded to bf16 into acts_bf16 (acts nullptr). No gi, gh or projection.
  const uint16_t* xb = nullptr;
  const uint16_t* hb_prev = nullptr;
  uint16_t* hb_new = nullptr;
  uint16_t* acts_bf16 = nullptr;  // [B, A] as acts
};

// Backward step. Fused (no projection): dL/dh of the state after the step is
// dh + da_h[t+1] W_hh, the GEMM of the tile; with a projection (LSTM only) the driver
// computes gy = (dh + dy) W_hr and the row kernel lstm_bwd_rows takes it.
//
// The gate gradients overwrite the saved activations of their step, slot for slot (each
// element is read before it is written): LSTM [da_i, da_f, da_g, da_o]; GRU [da_r, da_z,
// da_n, da_n*r], whose input side is slots 0-2 and hidden side slots 0, 1, 3; RNN [da] in a
// buffer of its own.
template <typename T>
struct BwdStep {
  StepShape s;
  TilePlan plan;
  const T* w;       // fused: packed W_hh [panels, G*H, units]
  const T* da_next; // fused: [B, ld] gate gradients of step t + 1 (hidden side: slots below)
  int64_t ld;       // row stride of da and da_next: 4H (LSTM, GRU) or H (RNN)
  int64_t k1;       // fused: columns [0, k1) of da_next meet rows [0, k1) of W_hh ...
  int64_t k2_off;   // ... and columns [k2_off, k2_off + k2) meet rows [k1, k1 + k2);
  int64_t k2;       // both 0 at the last step (no later step)
  const T* dy;      // [T, B, P] output gradient, natural time order; nullptr with a projection
  int64_t dy_pos0;  // the position dy's first row holds (a chunk of widened bf16 rows: > 0)
  const T* dh;      // [B, P] part of dL/dh' that does not go through W_hh (with a projection: dh + dy)
  const T* gy;      // [B, H] with a projection: dL/d(o*tanh(c')); else nullptr
  const T* h_prev;  // [B, P] state before the step (GRU)
  const T* h_new;   // [B, H] state after the step (RNN)
  const T* c_prev;  // [B, H] LSTM cell before the step
  const T* c_new;   // [B, H] LSTM cell after the step
  T* dc;            // [B, H] LSTM: in dL/dc', out dL/dc (in place)
  T* da;            // [B, ld] in: saved activations (LSTM, GRU); out: gate gradients, zero on inactive rows
  T* dh_prev;       // [B, P] the part of dL/dh that does not go through W_hh
  ActiveRows rows;  // fused: the batch rows the tiles cover, all active at this step
  T* db;            // fused: [row blocks, ld] per row block of the tiles, the sums of its
                    // rows' gate gradients (the bias gradients), or nullptr
};

// LSTM projection, forward after h' = (o*tanh(c')) W_hr^T: active rows copy h' to the
// output; inactive rows keep h_prev and emit zeros.
template <typename T>
struct ProjFwdPost {
  StepShape s;
  const T* h_prev;  // [B, P]
  T* h_new;         // [B, P] in: projected state; out: masked state
  T* y;             // [T, B, P] output, natural time order
};

// LSTM projection, backward before the W_hr GEMM: g = dh + dy (active rows), kept for
// dW_hr (zero on inactive rows).
template <typename T>
struct ProjBwdPre {
  StepShape s;
  const T* dy;  // [T, B, P] output gradient, natural time order
  const T* dh;  // [B, P] from later steps
  T* g;         // [B, P] dh + dy on active rows, dh on inactive rows
  T* g_saved;   // [B, P] dh + dy on active rows, 0 on inactive rows (for dW_hr)
};

// A plain GEMM through the step kernels' tiles: out row out_rows[i] (or i) = a_i W for the
// rows i in [0, R), a_i = a + i * lda ([K]); W packed as the backward panels
// ([panels, K, units], see recurrence.cpp's pack_bwd), out [*, N].
template <typename T>
struct RowsGemm {
  TilePlan plan;  // over R rows and N columns
  const T* w;
  const T* a;
  int64_t lda, K, R;
  T* out;
  int64_t N;
  const int64_t* out_rows;  // [R] or nullptr
};

// out [M, N] (=, or += with accumulate) = a^T b over K rows: a [K, >= M] and b [K, >= N]
// row-major with row strides lda, ldb (the weight gradients: gate gradients^T inputs).
template <typename T>
struct ColsGemm {
  const T* a;
  int64_t lda, M;
  const T* b;
  int64_t ldb, N;
  int64_t K;
  T* out;
  int64_t ldo;
  bool accumulate;
};

// Products of a few rows with a weight as it lies, W [N, K] row-major (row stride ldw): a
// decoder's single step, where packing W into panels costs more than the product and MKL's
// small GEMMs run far below the cache's bandwidth on these CPUs (AMD Zen 5, torch.mm timed
// in a loop: B1 K256 N1024: 71 GB/s of W, B4: 24 GB/s, B16: 16 GB/s). a [rows, *] with row
// stride lda, in groups of 4 rows that share W's rows or columns in cache; out row stride
// ldo. Which products take them: recurrence.cpp's small_rows.
//   dot:  out[r, n] = sum_k a[r, k] W[n, k]  (x W^T), W's rows [n0, n1);
//   axpy: out[r, k] (= or +=) sum_n a[r, n] W[n, k]  (d W), W's columns [k0, k1).
template <typename T>
struct SmallGemm {
  const T* a;
  int64_t lda, rows;
  const T* w;
  int64_t ldw, N, K;
  T* out;
  int64_t ldo;
  bool accumulate;  // axpy: add to out
};

template <typename T>
struct Kernels {
  TilePlan (*fwd_plan)(int64_t mode, int64_t B, int64_t H);
  TilePlan (*bwd_plan)(int64_t B, int64_t H);
  // Fused steps over the items [i0, i1) of the plan.
  void (*fwd)(int64_t mode, const FwdStep<T>&, int64_t i0, int64_t i1);
  void (*bwd)(int64_t mode, const BwdStep<T>&, int64_t i0, int64_t i1);
  // LSTM with a projection, backward, rows [b0, b1): gate gradients from gy.
  void (*lstm_bwd_rows)(const BwdStep<T>&, int64_t b0, int64_t b1);
  void (*proj_fwd_post)(const ProjFwdPost<T>&, int64_t b0, int64_t b1);
  void (*proj_bwd_pre)(const ProjBwdPre<T>&, int64_t b0, int64_t b1);
  // RowsGemm over the items [i0, i1) of its plan.
  void (*rows_gemm)(const RowsGemm<T>&, int64_t i0, int64_t i1);
  // ColsGemm over the tiles [i0, i1) of cols_gemm_rows() rows of out each.
  void (*cols_gemm)(const ColsGemm<T>&, int64_t i0, int64_t i1);
  int64_t (*cols_gemm_rows)();
  // SmallGemm over W's rows [i0, i1) (dot) or columns [i0, i1) (axpy).
  void (*small_dot)(const SmallGemm<T>&, int64_t i0, int64_t i1);
  void (*small_axpy)(const SmallGemm<T>&, int64_t i0, int64_t i1);
};

// One table per capability (cap_default.cpp, cap_avx2.cpp, cap_avx512.cpp).
namespace cap_default {
const Kernels<float>& kernels_f32();
const Kernels<double>& kernels_f64();
}  // namespace cap_default
namespace cap_avx2 {
const Kernels<float>& kernels_f32();
const Kernels<double>& kernels_f64();
}  // namespace cap_avx2
namespace cap_avx512 {
const Kernels<float>& kernels_f32();
const Kernels<double>& kernels_f64();
}  // namespace cap_avx512

// The forward step with the bf16 pair GEMM (FwdStep's xb, hb_prev, hb_new), or nullptr where
// the CPU has no AVX512-BF16 (or FUSED_RNN_CPU_BF16=0, or a capability below avx512).
using FwdPairsFn = void (*)(int64_t mode, const FwdStep<float>&, int64_t i0, int64_t i1);
FwdPairsFn bf16_pairs_fwd();
namespace cap_avx512bf16 {
void fwd_pairs(int64_t mode, const FwdStep<float>& a, int64_t i0, int64_t i1);
}  // namespace cap_avx512bf16

// The best table this CPU runs (FUSED_RNN_CPU_CAPABILITY=default|avx2|avx512 caps it).
template <typename T>
const Kernels<T>& kernels();
const char* kernel_capability();

}  // namespace cpu
}  // namespace fused_rnn
