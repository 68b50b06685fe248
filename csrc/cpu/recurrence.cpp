// Time loops of one recurrence layer and direction on CPU (see recurrence.h).
//
// Forward: per step one fused kernel (kernels.h): x_t W_ih^T + h W_hh^T tile by tile in
// registers, turned into the new state by the gate math in the tile's epilogue, tiles split
// over threads. Backward: the reverse loop, per step one fused kernel: dh = pass-through +
// da_h[t+1] W_hh per tile, then this step's gate gradients (and their sums for the bias
// gradients) in its epilogue; the sums over steps (dx, dW_ih, dW_hh) on the same register
// tiles, chunk by chunk as the loop finishes steps (StepSums), dW_hr as one GEMM. With an
// LSTM projection the gate math needs whole rows of dh (through W_hr), so that backward
// keeps a separate per-step GEMM. With lengths, a step's tiles cover only the rows still
// active (ActivePrefix) and the sums leave finished rows out (SumRows).
#include "recurrence.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <type_traits>
#include <mutex>
#include <utility>
#include <vector>

#include "gradient_pool.h"
#include "kernels.h"
#include "sequence_buffers.h"
#include "step_gemm.h"

namespace fused_rnn {
namespace cpu {
namespace {

// ---------------------------------------------------------------- helpers

// Runs f(i0, i1) over the items [0, n) of a fused step, split over threads in contiguous
// ranges (each thread keeps its panels of the weights across steps); items too small to pay
// for the hand-off run on one thread.
template <typename F>
void for_items(int64_t n, int64_t flops_per_item, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 200000 / std::max<int64_t>(1, flops_per_item));
  at::parallel_for(0, n, grain, f);
}

// Slot i (a [rows, cols] block) of a contiguous [slots, rows, cols] tensor, by address:
// an at::select per step costs about half a microsecond, which a B = 1 step feels.
template <typename T>
T* slot(const at::Tensor& t, int64_t i) { return t.data_ptr<T>() + i * t.stride(0); }

int64_t item_flops(const TilePlan& p, int64_t K) { return 2 * p.rows * p.units * p.gates * std::max<int64_t>(K, 1); }

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

at::Tensor none_like(const at::Tensor& x) { return at::empty({0}, x.options()); }

// Forward panels: the column segments of [W_ih | W_hh] (each [G*H, K_s], contiguous) ->
// [panels, K, G, units], hidden units zero-padded. One pass that reads each weight row in
// order: a permute().contiguous() of their concatenation (a strided 4-D copy after a full
// copy for the concatenation) took ~4x as long (1.7 ms at G*H = K = 768, more than a
// decoder step).
template <typename T>
at::Tensor pack_fwd(const std::vector<at::Tensor>& segments, int64_t G, const TilePlan& p) {
  const int64_t H = segments[0].size(0) / G, U = p.units;
  int64_t K = 0;
  for (const at::Tensor& s : segments) K += s.size(1);
  at::Tensor out = at::empty({p.panels, K, G, U}, segments[0].options());
  T* const dst = out.data_ptr<T>();
  // Through a [KB, units] tile, KB columns of each row read at once: one column at a time
  // from `units` rows a power of two apart would land on a few L1 sets.
  constexpr int64_t KB = 16;
  // Threads only for ~32K elements each: a small layer's weights are packed on every call.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, K * U));
  at::parallel_for(0, p.panels * G, grain, [&](int64_t i0, int64_t i1) {
    std::vector<T> tile(KB * U);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t panel = i / G, g = i % G;
      const int64_t rows = std::max<int64_t>(0, std::min(U, H - panel * U));
      std::fill(tile.begin(), tile.end(), T(0));
      int64_t k0 = 0;
      for (const at::Tensor& s : segments) {
        const int64_t Ks = s.size(1);
        const T* const src = s.data_ptr<T>() + (g * H + panel * U) * Ks;
        for (int64_t kb = 0; kb < Ks; kb += KB) {
          const int64_t n = std::min(KB, Ks - kb);
          for (int64_t u = 0; u < rows; ++u) {
            for (int64_t k = 0; k < n; ++k) tile[k * U + u] = src[u * Ks + kb + k];
          }
          for (int64_t k = 0; k < n; ++k) {
            std::memcpy(dst + ((panel * K + k0 + kb + k) * G + g) * U, &tile[k * U], U * sizeof(T));
          }
        }
        k0 += Ks;
      }
    }
  });
  return out;
}

// Forward panels in bf16 pairs, for the pair GEMM (FwdStep::xb): element (k2, g, u) of
// [panels, K/2, G, units] is the pair (w[g*H + u][2 k2], w[g*H + u][2 k2 + 1]), which lie
// side by side in a weight row: pack_fwd's panels of the bf16 segments (K_s even) read as
// 32-bit elements. (An element-wise loop took 8.5% of T=20 B=64 I=H=1024 LSTM's forward.)
at::Tensor pack_pairs(const std::vector<at::Tensor>& segments, int64_t G, const TilePlan& p) {
  std::vector<at::Tensor> as_pairs;
  for (const at::Tensor& s : segments) as_pairs.push_back(s.contiguous().view(at::kFloat));
  return pack_fwd<float>(as_pairs, G, p);
}

// The forward panels of the last few weight pairs, kept inside a weights-unchanged scope
// (panel_cache_scope). A decoder calls a one-step recurrence per token with the same
// weights: packing them again each call (a strided pass over ~3 MiB at H=256) cost more
// than the step itself. Only inside a scope, because a write through `.data` (gradcheck's
// perturbations, old optimizers) bumps no version counter that the weight itself sees: a
// cache living across scopes would then serve stale panels. Inside, an entry still holds
// weak references to the weights' storages (a freed weight is never mistaken for a new one
// at the same address) and their version counters (an in-place update repacks). The cache
// is emptied when the calling thread leaves its outermost scope. Inference tensors have no
// version counter: never cached.
class PanelCache {
 public:
  template <typename Pack>
  at::Tensor get(const at::Tensor& a, const at::Tensor& b, int64_t G, const TilePlan& p,
                 const Pack& pack) {
    if (depth_ == 0 || !cacheable(a) || !cacheable(b)) return pack();
    const Key key{Ref(a), Ref(b), G, p.units, p.panels};
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (entries_[i].first.same(key)) {
        std::rotate(entries_.begin(), entries_.begin() + i, entries_.begin() + i + 1);
        return entries_[0].second;
      }
    }
    at::Tensor packed = pack();
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                  [](const Entry& e) { return e.first.expired(); }),
                   entries_.end());
    if (entries_.size() >= kCapacity) entries_.pop_back();
    entries_.insert(entries_.begin(), Entry{key, packed});
    return packed;
  }

  bool active() const { return depth_ > 0; }

  void scope(bool enter) {
    if (enter) {
      ++depth_;
      return;
    }
    TORCH_CHECK(depth_ > 0, "fused_rnn: panel_cache_scope(False) without a matching enter");
    if (--depth_ == 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      entries_.clear();
    }
  }

 private:
  static constexpr size_t kCapacity = 4;
  struct Ref {
    explicit Ref(const at::Tensor& t)
        : storage(t.storage().getWeakStorageImpl()), offset(t.storage_offset()),
          version(int64_t(t._version())), sizes(t.sizes().vec()), strides(t.strides().vec()),
          dtype(t.scalar_type()) {}
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    int64_t offset, version;
    std::vector<int64_t> sizes, strides;
    at::ScalarType dtype;
    bool same(const Ref& o) const {
      // _unsafe_get_target: identity only, never dereferenced.
      return !storage.expired() && storage._unsafe_get_target() == o.storage._unsafe_get_target() &&
             offset == o.offset && version == o.version && sizes == o.sizes &&
             strides == o.strides && dtype == o.dtype;
    }
  };
  struct Key {
    Ref a, b;
    int64_t G, units, panels;
    bool same(const Key& o) const {
      return a.same(o.a) && b.same(o.b) && G == o.G && units == o.units && panels == o.panels;
    }
    bool expired() const { return a.storage.expired() || b.storage.expired(); }
  };
  using Entry = std::pair<Key, at::Tensor>;

  static bool cacheable(const at::Tensor& t) { return t.defined() && !t.is_inference(); }

  static thread_local int64_t depth_;
  std::mutex mutex_;
  std::vector<Entry> entries_;
};

thread_local int64_t PanelCache::depth_ = 0;

PanelCache& panel_cache() {
  static PanelCache cache;
  return cache;
}

// Backward panels: W_hh [G*H, H], the right operand of da_h W_hh -> [panels, G*H, units].
at::Tensor pack_bwd(const at::Tensor& w_hh, const TilePlan& p) {
  const int64_t K = w_hh.size(0), H = w_hh.size(1), Hp = p.panels * p.units;
  at::Tensor w = Hp > H ? at::constant_pad_nd(w_hh, {0, Hp - H}) : w_hh;
  return w.view({K, p.panels, p.units}).permute({1, 0, 2}).contiguous();
}

// Whether each step computes x_t W_ih^T itself, its panel [W_ih | W_hh] streaming through
// the cache once per step, or one GEMM does all steps first (a [T, B, G*H] round trip to
// memory). The fewer the rows, the less a streamed weight is reused, and the farther it
// streams from, the more that costs: the input GEMM takes batches below a row count that
// grows with each thread's share of the weights. Measured on 2 Zen 4 cores (1 MiB L2 each,
// 32 MiB L3), LSTM forward without grad, alternating runs (fused step vs input GEMM):
// I=H=256 (1 MiB a thread), T=100: B2 2.10 vs 1.84 ms, B4 2.54 vs 2.84, B16 8.91 vs 9.85;
// I=H=384, T=50: B4 3.68 vs 3.41; I=H=512 (4 MiB), T=50: B4 6.02 vs 5.72, B8 10.41 vs 10.62,
// B16 17.5 vs 18.3; I=H=1024 (16 MiB), T=20: B32 73.8 vs 66.1, B64 116 vs 122.
// FUSED_RNN_CPU_INPUT_GEMM=0|1 forces either path (tests run both).
// One step inside a weights-unchanged scope (a decoder's step) is the exception: the panels
// of [W_ih | W_hh] then come packed from the cache, and the fused x W_ih^T beats a GEMM of
// B rows (B=16, I=512, H=256 LSTM: 168 vs 238 us per call).
struct InputGemmTier {
  int64_t max_bytes_per_thread;  // a thread's share of [W_ih | W_hh] up to which ...
  int64_t max_rows;              // ... batches of at most this many rows take the input GEMM
};
constexpr InputGemmTier kInputGemmTiers[] = {{int64_t(1) << 20, 3}, {int64_t(8) << 20, 7}};
constexpr int64_t kInputGemmMaxRows = 32;  // beyond the tiers

bool use_input_gemm(int64_t B, int64_t T, bool panels_cached, int64_t weight_bytes) {
  static const char* env = std::getenv("FUSED_RNN_CPU_INPUT_GEMM");
  if (env && *env) return env[0] == '1';
  if (T == 1 && panels_cached) return false;
  const int64_t share = weight_bytes / std::max<int64_t>(1, at::get_num_threads());
  for (const InputGemmTier& tier : kInputGemmTiers) {
    if (share <= tier.max_bytes_per_thread) return B <= tier.max_rows;
  }
  return B <= kInputGemmMaxRows;
}

// With lengths: the rows longest first, and how many are still active at each step, so that
// a step's tiles cover only those (ActiveRows); the driver carries the finished ones. A
// PackedSequence of mixed lengths thus costs the GEMM work of its real steps, not of T full
// batches. Without lengths: every row at every step.
// p covering `rows` batch rows (its row blocks; panels stay).
TilePlan covering(TilePlan p, int64_t rows) {
  p.row_blocks = (rows + p.rows - 1) / p.rows;
  return p;
}

class ActivePrefix {
 public:
  ActivePrefix(int64_t T, int64_t B, const int64_t* lengths) : B_(B) {
    if (!lengths) return;
    order_.resize(B);
    for (int64_t b = 0; b < B; ++b) order_[b] = b;
    std::stable_sort(order_.begin(), order_.end(),
                     [&](int64_t u, int64_t v) { return lengths[u] > lengths[v]; });
    count_.assign(T, 0);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < std::min(lengths[b], T); ++t) ++count_[t];
    }
  }
  ActiveRows at(int64_t t) const {
    return order_.empty() ? ActiveRows{nullptr, B_} : ActiveRows{order_.data(), count_[t]};
  }
  // f(b) for each row the step's tiles leave out (finished rows).
  template <typename F>
  static void for_finished(const ActiveRows& rows, int64_t B, const F& f) {
    for (int64_t i = rows.n; i < B; ++i) f(rows[i]);
  }

 private:
  int64_t B_;
  std::vector<int64_t> order_, count_;
};

// Out row out_rows[i] (or i) = a_i W for the R rows a_i = a + i * lda ([K]), through the
// step kernels' tiles: w_packed = pack_bwd(W [K, N], plan), plan = bwd_plan(any rows, N).
template <typename T>
void tiles_times(const T* a, int64_t lda, int64_t R, int64_t K, const at::Tensor& w_packed,
                 TilePlan plan, T* out, int64_t N, const int64_t* out_rows) {
  const Kernels<T>& k = kernels<T>();
  RowsGemm<T> g;
  g.plan = covering(plan, R);
  g.w = w_packed.data_ptr<T>();
  g.a = a;
  g.lda = lda;
  g.K = K;
  g.R = R;
  g.out = out;
  g.N = N;
  g.out_rows = out_rows;
  // Threads take whole panels (each keeps its panels in its L2); too few panels for the
  // threads (a narrow W): ranges of rows instead.
  if (plan.panels >= at::get_num_threads()) {
    at::parallel_for(0, plan.panels, 1, [&](int64_t q0, int64_t q1) { k.rows_gemm(g, q0, q1); });
    return;
  }
  at::parallel_for(0, R, 8 * plan.rows, [&](int64_t r0, int64_t r1) {
    RowsGemm<T> part = g;
    part.a += r0 * lda;
    part.R = r1 - r0;
    part.plan = covering(plan, part.R);
    if (part.out_rows) {
      part.out_rows += r0;
    } else {
      part.out += r0 * N;
    }
    k.rows_gemm(part, 0, plan.panels);
  });
}

// Rows from which a GEMM over all steps goes through the step kernels' tiles (below, at::mm:
// packing a weight would cost a decoder's step more than its GEMM).
constexpr int64_t kTilesMinRows = 256;

// Weight elements a thread's share of a small-batch product must hold to pay for the
// hand-off to a second thread (~0.5 MiB of fp32).
constexpr int64_t kSmallSplit = int64_t(1) << 17;

// Whether a product of `rows` rows with W goes to the small-batch kernels (kernels.h's
// SmallGemm) rather than MKL: up to 64 rows (a decoder's step; `python -m
// benchmarks.cell_calls` on Zen 5, benchmarks/results/*-session11-cells.txt: LSTMCell calls
// B1 H512 0.58x torch.nn's time, B16 H512 0.61x, B64 H1024 0.68x, where the same rows took
// 1.00-1.05x with MKL, *-session10-cells.txt), and below the tiles' rows where W holds 1 MiB
// or more (`python -m benchmarks.run --shapes 100,1,256,256`, the input projection's 100
// rows: LSTM I=H=256 forward 0.80 -> 0.71 ms; an RNN's 256 KiB W_ih went 0.28 -> 0.34 ms:
// MKL keeps those).
// Not measured on an Intel CPU, where MKL takes faster paths of its own.
constexpr int64_t kSmallRows = 64;
template <typename T>
bool small_rows(int64_t rows, const at::Tensor& w) {
  return rows <= kSmallRows ||
         (rows < kTilesMinRows && w.numel() * int64_t(sizeof(T)) >= (int64_t(1) << 20));
}

// out [rows, N] (row stride ldo) = a [rows, K] W^T (`transposed`), or out [rows, K] (=, or +=
// with accumulate) a [rows, N] W, for W [N, K] as it lies; threads split W's rows (the dot)
// or its columns (the axpy).
template <typename T>
void small_product(const T* a, int64_t lda, int64_t rows, const at::Tensor& w, T* out,
                   int64_t ldo, bool transposed, bool accumulate) {
  const SmallGemm<T> g{a, lda, rows, w.data_ptr<T>(), w.stride(0), w.size(0), w.size(1), out,
                       ldo, accumulate};
  const Kernels<T>& k = kernels<T>();
  const auto kernel = transposed ? k.small_dot : k.small_axpy;
  const int64_t span = transposed ? g.N : g.K, across = transposed ? g.K : g.N;
  const int64_t grain = std::max<int64_t>(1, kSmallSplit / std::max<int64_t>(1, across));
  at::parallel_for(0, span, grain, [&](int64_t i0, int64_t i1) { kernel(g, i0, i1); });
}

// x [R, K] W^T for W [N, K], R below the tiles' rows: the small-batch kernels, else MKL.
template <typename T>
at::Tensor few_rows_times_transposed(const at::Tensor& x, const at::Tensor& w) {
  const int64_t R = x.size(0);
  if (!small_rows<T>(R, w) || x.stride(1) != 1 || w.stride(1) != 1) return at::mm(x, w.t());
  at::Tensor out = at::empty({R, w.size(0)}, x.options());
  small_product<T>(x.data_ptr<T>(), x.stride(0), R, w, out.data_ptr<T>(), out.stride(0),
                   /*transposed=*/true, /*accumulate=*/false);
  return out;
}

// x [R, K] W^T for W [N, K] (the input projection of all steps), through the tiles from
// kTilesMinRows rows: the training forward of T=100, B=16, I=H=256 LSTM (this GEMM forced) in
// 10.17 vs 10.56 ms with MKL's at::mm (median of 40 alternating runs). W packs straight into
// panels of W^T (one pass; a transposed copy first cost T=50 B=8 I=H=512 LSTM ~1.5 of 13 ms).
template <typename T>
at::Tensor times_transposed(const at::Tensor& x, const at::Tensor& w) {
  const int64_t R = x.size(0), N = w.size(0);
  if (R < kTilesMinRows) return few_rows_times_transposed<T>(x, w);
  const TilePlan plan = kernels<T>().bwd_plan(1, N);
  const at::Tensor packed = pack_fwd<T>({w}, 1, plan);  // [panels, K, 1, units]
  at::Tensor out = at::empty({R, N}, x.options());
  tiles_times<T>(x.data_ptr<T>(), x.stride(0), R, x.size(1), packed, plan, out.data_ptr<T>(), N,
                 nullptr);
  return out;
}

// Both biases folded into one vector, added in the fused pass (GRU keeps b_hn apart,
// inside the reset product). An addmm would broadcast the bias over all T*B rows first.
// A plain loop: three tensor ops cost a decoder's step ~10 us.
struct FoldedBias {
  at::Tensor bias, b_hn;  // [G*H], GRU's [H]; undefined without biases
};

template <typename T>
FoldedBias fold_biases(const at::Tensor& b_ih, const at::Tensor& b_hh, bool gru, int64_t H) {
  FoldedBias f;
  if (!b_ih.defined()) return f;
  const at::Tensor bi = b_ih.contiguous(), bh = b_hh.contiguous();
  const int64_t GH = bi.size(0), folded = gru ? 2 * H : GH;
  f.bias = at::empty({GH}, bi.options());
  const T *pi = bi.data_ptr<T>(), *ph = bh.data_ptr<T>();
  T* const pb = f.bias.data_ptr<T>();
  for (int64_t i = 0; i < GH; ++i) pb[i] = i < folded ? pi[i] + ph[i] : pi[i];
  if (gru) f.b_hn = bh.narrow(0, 2 * H, H);
  return f;
}

// ---------------------------------------------------------------- forward

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> forward_impl(
    int64_t mode, bool reverse, const at::Tensor& x_, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths_, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& w_hr, int64_t saves,
    const at::Tensor& h0_bf16 = at::Tensor()) {
  const int64_t nT = x_.size(0), B = x_.size(1), I = x_.size(2);
  const int64_t G = gate_count(mode), GH = w_ih.size(0), H = GH / G;
  const bool lstm = mode == kLSTM, gru = mode == kGRU;
  const bool proj = w_hr.defined();
  const int64_t P = proj ? w_hr.size(0) : H;
  // The bf16 pair GEMM (forward_bf16, where bf16_pairs_fwd() is): x_, w_ih, w_hh and h0_bf16
  // are bf16, the rest T.
  const bool pairs = h0_bf16.defined();
  const FwdPairsFn pairs_fwd = pairs ? bf16_pairs_fwd() : nullptr;
  const bool need_saved = saves != kSaveNothing;
  // kSaveStates: backward recomputes the activations (ActsRecompute) from the states; with
  // the pair GEMM or a projection it could not reproduce them, so they are kept.
  const bool acts_recomputed = saves == kSaveStates && !pairs && !proj;
  const auto opts = h0.options();
  const at::Tensor x = x_.contiguous();
  const at::Tensor lengths = lengths_.defined() ? lengths_.contiguous() : lengths_;
  const int64_t* len = ptr<int64_t>(lengths);

  const FoldedBias bias = fold_biases<T>(b_ih, b_hh, gru, H);
  // Forward in time, no lengths, no projection: the output is the state sequence itself
  // (y[t] = h_{t+1}), so the states live in y and backward reads them from y and h0; one
  // [T, B, P] buffer fewer.
  const bool states_in_y = need_saved && !reverse && !lengths.defined() && !proj;
  const int64_t S = need_saved ? nT + 1 : 2;  // state slots: all steps, or ping-pong
  // Without saving, step 0 reads the initial state where it lies (a decoder's one step
  // would otherwise copy it first); slot 0 then holds it only when there is no step.
  const bool initial_in_slot = need_saved || nT == 0;
  const at::Tensor h0c = h0.contiguous();
  const at::Tensor c0c = lstm ? c0.contiguous() : at::Tensor();
  at::Tensor hs;
  if (!states_in_y) {
    hs = sequence_buffer({S, B, P}, opts);
    if (initial_in_slot) hs[0].copy_(h0);
  }
  at::Tensor cs;
  if (lstm) {
    cs = sequence_buffer({S, B, H}, opts);
    if (initial_in_slot) cs[0].copy_(c0);
  }
  const int64_t A = act_count(mode);
  // With the pair GEMM the activations are saved as bf16, as the caller keeps them.
  const at::Tensor acts = need_saved && A ? sequence_buffer({acts_recomputed ? 0 : nT, B, A * H},
                                                           pairs ? x_.options() : opts)
                                          : at::Tensor();
  const at::Tensor ypre = proj ? sequence_buffer({need_saved ? nT : 1, B, H}, opts) : at::Tensor();
  at::Tensor y = sequence_buffer({nT, B, P}, opts);
  const Kernels<T>& k = kernels<T>();
  const TilePlan plan = k.fwd_plan(mode, B, H);
  // One step outside a weights-unchanged scope (a cell called once per token): both GEMMs on
  // the weights as they lie (MKL), the tiles only for the gate math. Packing panels for one
  // step cost more than the step: LSTMCell B=1 I=H=512 1819 us per call vs torch.nn's 309.
  const bool one_step = !pairs && nT == 1 && !panel_cache().active();
  const bool input_gemm = !pairs && (one_step || use_input_gemm(B, nT, panel_cache().active(),
                                                                (I + P) * GH * int64_t(sizeof(T))));
  const at::Tensor gi = input_gemm ? times_transposed<T>(x.view({nT * B, I}), w_ih) : at::Tensor();
  const at::Tensor gh = one_step ? few_rows_times_transposed<T>(h0c, w_hh) : at::Tensor();
  // Keyed on both weights; the sign of G tells the two layouts (W_hh alone with the input
  // GEMM, [W_ih | W_hh] without) apart.
  const at::Tensor w_packed =
      one_step ? at::Tensor()
      : pairs  ? pack_pairs({w_ih, w_hh}, G, plan)
               : panel_cache().get(w_ih, w_hh, input_gemm ? -G : G, plan, [&] {
                   return input_gemm ? pack_fwd<T>({w_hh}, G, plan)
                                     : pack_fwd<T>({w_ih, w_hh}, G, plan);
                 });
  // The pair GEMM's state operand: bf16 ping-pong slots, step 0 reading h0 as given.
  const at::Tensor hb = pairs ? at::empty({2, B, P}, h0_bf16.options()) : at::Tensor();
  const auto bf16_slot = [&](const at::Tensor& t, int64_t i) {
    return reinterpret_cast<uint16_t*>(t.data_ptr()) + i * B * P;
  };
  const at::Tensor w_hr_t = proj ? w_hr.t() : at::Tensor();
  // With a projection every row goes through the tiles (which zero the finished rows' h_new
  // for the W_hr GEMM) and proj_fwd_post carries them.
  const ActivePrefix active(nT, B, proj ? nullptr : len);

  for (int64_t t = 0; t < nT; ++t) {
    const int64_t sp = need_saved ? t : t % 2, sn = need_saved ? t + 1 : (t + 1) % 2;
    const bool from_h0 = t == 0 && (states_in_y || !initial_in_slot);
    T* const h_prev = from_h0 ? h0c.data_ptr<T>() : states_in_y ? slot<T>(y, t - 1) : slot<T>(hs, sp);
    T* const h_next = states_in_y ? slot<T>(y, t) : slot<T>(hs, sn);
    const int64_t yp_slot = need_saved ? t : 0;

    FwdStep<T> a;
    a.s = StepShape{nT, B, H, P, t, reverse, len};
    a.plan = plan;
    a.w = pairs ? reinterpret_cast<const T*>(w_packed.data_ptr()) : ptr<T>(w_packed);
    a.x = pairs ? nullptr : x.data_ptr<T>();
    if (pairs) {
      a.xb = reinterpret_cast<const uint16_t*>(x.data_ptr());
      a.hb_prev = t == 0 ? reinterpret_cast<const uint16_t*>(h0_bf16.data_ptr())
                         : bf16_slot(hb, t % 2);
      a.hb_new = bf16_slot(hb, (t + 1) % 2);
    }
    a.I = I;
    a.gi = ptr<T>(gi);
    a.gh = ptr<T>(gh);
    a.bias = ptr<T>(bias.bias);
    a.b_hn = ptr<T>(bias.b_hn);
    a.h_prev = h_prev;
    a.h_new = proj ? slot<T>(ypre, yp_slot) : h_next;
    a.c_prev = !lstm ? nullptr : t == 0 && !initial_in_slot ? c0c.data_ptr<T>() : slot<T>(cs, sp);
    a.c_new = lstm ? slot<T>(cs, sn) : nullptr;
    a.y = proj || states_in_y ? nullptr : y.data_ptr<T>();
    a.acts = acts.defined() && !pairs && !acts_recomputed ? slot<T>(acts, t) : nullptr;
    if (pairs && acts.defined()) {
      a.acts_bf16 = reinterpret_cast<uint16_t*>(acts.data_ptr()) + t * B * A * H;
    }
    a.proj = proj;
    a.rows = active.at(t);
    a.plan = covering(plan, a.rows.n);
    for_items(a.plan.items(), item_flops(a.plan, one_step ? 0 : input_gemm ? P : I + P),
              [&](int64_t i0, int64_t i1) {
                if (pairs) {
                  pairs_fwd(mode, reinterpret_cast<const FwdStep<float>&>(a), i0, i1);
                } else {
                  k.fwd(mode, a, i0, i1);
                }
              });
    // Finished rows keep their state and emit zeros (natural position t: see StepShape::pos).
    ActivePrefix::for_finished(a.rows, B, [&](int64_t b) {
      if (pairs) std::memcpy(a.hb_new + b * P, a.hb_prev + b * P, sizeof(uint16_t) * P);
      if (a.h_prev != a.h_new) std::memcpy(a.h_new + b * H, a.h_prev + b * P, sizeof(T) * H);
      if (lstm) std::memcpy(a.c_new + b * H, a.c_prev + b * H, sizeof(T) * H);
      std::memset(a.y + (t * B + b) * P, 0, sizeof(T) * P);
    });
    if (proj) {
      at::Tensor h_next_t = hs[sn];
      at::mm_out(h_next_t, ypre[yp_slot], w_hr_t);
      const ProjFwdPost<T> p{a.s, a.h_prev, h_next, y.data_ptr<T>()};
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) { k.proj_fwd_post(p, b0, b1); });
    }
  }

  const int64_t last = need_saved ? nT : nT % 2;
  // Without saving, the state buffers are this call's own: their last slot is the result.
  at::Tensor h_n = states_in_y ? (nT ? y[nT - 1] : h0c).clone()
                   : need_saved ? hs[last].clone() : hs[last];
  at::Tensor c_n = !lstm ? none_like(x) : need_saved ? cs[last].clone() : cs[last];
  std::vector<at::Tensor> saved;
  if (need_saved) {
    if (A) saved.push_back(acts);
    saved.push_back(states_in_y ? y : hs);
    if (lstm) saved.push_back(cs);
    if (proj) saved.push_back(ypre);
  }
  return {y, h_n, c_n, saved};
}

// ---------------------------------------------------------------- backward

// dh += da W for W [N, K]: the small-batch kernel for a few rows, else MKL.
template <typename T>
void add_product(at::Tensor& dh, const at::Tensor& da, const at::Tensor& w) {
  if (!small_rows<T>(dh.size(0), w) || da.stride(1) != 1 || w.stride(1) != 1 ||
      !dh.is_contiguous()) {
    dh.addmm_(da, w);
    return;
  }
  small_product<T>(da.data_ptr<T>(), da.stride(0), da.size(0), w, dh.data_ptr<T>(), dh.stride(0),
                   /*transposed=*/false, /*accumulate=*/true);
}

// dh += da[:, hidden side] W_hh, da [B, ld] in the slot layout of kernels.h's BwdStep.
template <typename T>
void add_hidden_side_product(at::Tensor& dh, const at::Tensor& da, const at::Tensor& w_hh,
                             int64_t mode, int64_t H) {
  if (mode == kGRU) {
    add_product<T>(dh, da.narrow(1, 0, 2 * H), w_hh.narrow(0, 0, 2 * H));
    add_product<T>(dh, da.narrow(1, 3 * H, H), w_hh.narrow(0, 2 * H, H));
  } else {
    add_product<T>(dh, da, w_hh);
  }
}

// The states h_0..h_T of the forward: a saved [T+1, B, P] buffer, or (forward in time,
// no lengths, no projection) h0 and the output y [T, B, P], whose step t is h_{t+1}.
struct States {
  at::Tensor saved, h0;
  bool in_y;
  States(const at::Tensor& saved_, const at::Tensor& h0_, int64_t nT)
      : saved(saved_), h0(h0_.contiguous()), in_y(saved_.size(0) == nT) {}
  template <typename T>
  T* at_step(int64_t t) const {
    return in_y ? (t ? slot<T>(saved, t - 1) : h0.data_ptr<T>()) : slot<T>(saved, t);
  }
};

// backward_bf16's tensors as they were saved: the activations (widened by the reverse loop
// a chunk at a time), the states and h0 (the sums' operands, with x and W_ih in bf16); with
// `chunked` (no lengths, no projection) the states, LSTM's cells and dy too are widened by
// the loop a chunk at a time (cs [T+1, B, H], dy [T, B, P]), not beforehand.
struct Bf16Saved {
  at::Tensor acts, hs, h0, cs, dy;
  bool chunked = false;
};

// The activations of a forward that kept only its states (kSaveStates), recomputed a chunk
// of steps at a time into the reverse loop's ring, by the forward's own step kernel from
// the saved states: the same tiles and sums, so the same numbers. Costs the forward's GEMM
// work again; keeps [T, B, 4H] activations out of memory between forward and backward.
template <typename T>
struct ActsRecompute {
  int64_t mode;
  StepShape shape;
  at::Tensor x, w_packed;  // x [T, B, I]; [W_ih | W_hh] packed as the forward's panels
  FoldedBias bias;
  const States* hs;
  at::Tensor cs;                 // LSTM's cells [T+1, B, H]
  at::Tensor h_scratch, c_scratch;  // the new states, not needed again
  TilePlan plan;
  ActivePrefix active;

  ActsRecompute(int64_t mode_, const StepShape& s, const at::Tensor& x_, const at::Tensor& w_ih,
                const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh,
                const States& hs_, const at::Tensor& cs_)
      : mode(mode_), shape(s), x(x_), bias(fold_biases<T>(b_ih, b_hh, mode_ == kGRU, s.H)),
        hs(&hs_), cs(cs_), plan(kernels<T>().fwd_plan(mode_, s.B, s.H)),
        active(s.T, s.B, s.lengths) {
    w_packed = pack_fwd<T>({w_ih, w_hh}, gate_count(mode), plan);
  }

  // Steps [t0, t1) into da's slots [0, t1 - t0). Given the saved states the steps are
  // independent: without lengths, the chunk's steps run as one step of all their rows, so
  // the tiles read a weight panel once per group of row blocks rather than at every step
  // (32 MiB of [W_ih | W_hh] at I=H=1024): 3-4% off the LSTM recompute's fwd+bwd at B32
  // I=H=1024 and B64 I=H=256. The states before the chunk's steps lie one after another
  // (saved slots, or y) except h0.
  void operator()(int64_t t0, int64_t t1, const at::Tensor& da) {
    int64_t t = t0;
    if (shape.lengths) {
      for (; t < t1; ++t) run(t, 1, da, t0);
      return;
    }
    if (t == 0 && hs->in_y) run(t++, 1, da, t0);
    if (t < t1) run(t, t1 - t, da, t0);
  }

 private:
  std::vector<T> x_rows;  // the reverse direction's inputs of a run, in loop order

  // Steps [t, t + n) as one step of n * B rows (n > 1 without lengths only).
  void run(int64_t t, int64_t n, const at::Tensor& da, int64_t t0) {
    const Kernels<T>& k = kernels<T>();
    const bool lstm = mode == kLSTM;
    const int64_t B = shape.B, I = x.size(2), R = n * B;
    if (!h_scratch.defined() || h_scratch.size(0) < R) {
      h_scratch = at::empty({R, shape.H}, x.options());
      if (lstm) c_scratch = at::empty({R, shape.H}, x.options());
    }
    FwdStep<T> a{};
    a.s = shape;
    a.s.t = t;
    a.x = x.data_ptr<T>();
    if (n > 1) {
      a.s.T = 1;
      a.s.B = R;
      a.s.t = 0;
      a.s.reverse = false;
      if (shape.reverse) {  // loop step t + i reads natural step T - 1 - (t + i)
        x_rows.resize(static_cast<size_t>(R * I));
        for (int64_t i = 0; i < n; ++i) {
          std::memcpy(x_rows.data() + i * B * I, a.x + (shape.T - 1 - t - i) * B * I,
                      sizeof(T) * B * I);
        }
        a.x = x_rows.data();
      } else {
        a.x += t * B * I;
      }
    }
    a.w = ptr<T>(w_packed);
    a.I = I;
    a.bias = ptr<T>(bias.bias);
    a.b_hn = ptr<T>(bias.b_hn);
    a.h_prev = hs->template at_step<T>(t);
    a.h_new = h_scratch.data_ptr<T>();
    a.c_prev = lstm ? slot<T>(cs, t) : nullptr;
    a.c_new = lstm ? c_scratch.data_ptr<T>() : nullptr;
    a.acts = slot<T>(da, t - t0);
    a.rows = n > 1 ? ActiveRows{nullptr, R} : active.at(t);
    a.plan = covering(plan, a.rows.n);
    for_items(a.plan.items(), item_flops(a.plan, a.I + shape.P),
              [&](int64_t i0, int64_t i1) { k.fwd(mode, a, i0, i1); });
  }
};

// The reverse loop. Writes the gate gradients of every step into da (LSTM and GRU: the saved
// activations [T, B, 4H], in place; with `ring`, a buffer of `chunk` steps that each chunk
// reuses, which `recompute` fills with the chunk's activations where they were not kept),
// fills dhs [T, B, P] with a projection (dh + dy per step, for dW_hr) and, without
// one, db_sums [ld] (the gate gradients summed over steps and rows); returns dh0, dc0. Each
// time steps [t0, t1) are done (`chunk` of them; all at once with a projection),
// on_chunk(t0, t1, rows) takes their gradients, rows [(t1 - t0) * B, ld], whose order it may
// change: the sums over steps run there, on rows still in cache, and an RNN keeps `chunk`
// steps of gradients instead of T.
template <typename T, typename OnChunk>
std::pair<at::Tensor, at::Tensor> backward_loop(
    int64_t mode, const StepShape& shape, const at::Tensor& w_hh, const at::Tensor& w_hr,
    const States& hs, const at::Tensor& cs, const at::Tensor& dy, const at::Tensor& dh_n,
    const at::Tensor& dc_n, const at::Tensor& da, bool ring, int64_t chunk, at::Tensor& dhs,
    at::Tensor& db_sums, OnChunk& on_chunk, const Bf16Saved& bf16 = {},
    const std::function<void(int64_t, int64_t, const at::Tensor&)>& recompute = {}) {
  const int64_t nT = shape.T, B = shape.B, H = shape.H, P = shape.P, ld = da.size(2);
  const bool lstm = mode == kLSTM, gru = mode == kGRU, proj = w_hr.defined();
  const auto opts = da.options();  // dy may be bf16 (bf16.chunked)
  const Kernels<T>& k = kernels<T>();

  at::Tensor dh = dh_n.defined() ? dh_n.contiguous().clone() : at::zeros({B, P}, opts);
  at::Tensor dh_next = at::empty({B, P}, opts);
  at::Tensor dc;
  if (lstm) dc = dc_n.defined() ? dc_n.contiguous().clone() : at::zeros({B, H}, opts);

  // Step t0's gradients as its chunk is handed over (on_chunk may reorder the chunk's rows):
  // step t0 - 1 reads them, and after step 0 the hidden-side product for dh0.
  at::Tensor carry = at::empty({B, ld}, opts);
  const auto hand_over = [&](int64_t t0, int64_t t1) {
    const int64_t base = ring ? t0 : 0;
    if (t1 > t0) carry.copy_(da[t0 - base]);
    on_chunk(t0, t1, da.narrow(0, t0 - base, t1 - t0).view({(t1 - t0) * B, ld}));
  };

  BwdStep<T> a{};
  a.s = shape;
  a.ld = ld;
  a.dy = proj || bf16.chunked ? nullptr : dy.data_ptr<T>();
  a.dc = lstm ? dc.data_ptr<T>() : nullptr;

  if (!proj) {
    // Fused: step t's tile GEMM adds da_h[t+1] W_hh to the pass-through part of dh.
    a.plan = k.bwd_plan(B, H);
    // One step (a decoder's) has no da_h[t+1] W_hh inside the loop: nothing to pack.
    const TilePlan plan = a.plan;
    at::Tensor w_packed = nT > 1 ? pack_bwd(w_hh, plan) : at::Tensor();
    a.w = ptr<T>(w_packed);
    const ActivePrefix active(nT, B, shape.lengths);
    // The bias gradients, summed in the tiles' epilogue from L1 (a pass over the [T*B, 4H]
    // gradients after the loop cost 0.5 ms more at T=100, B=64, H=256; GRU ~1 ms, two
    // sums): one row of sums per row block of the tiles, which one item owns at each step,
    // so the sums never depend on how items fall to threads (tests/test_determinism.py).
    const int64_t row_blocks = plan.row_blocks;
    const at::Tensor db_parts = at::zeros({std::max<int64_t>(row_blocks, 1), a.ld}, opts);
    a.db = db_parts.data_ptr<T>();
    int64_t t1 = nT, t0 = std::max<int64_t>(0, nT - chunk);  // the chunk of step t
    // bf16 tensors widened a chunk at a time: the activations into the ring; with
    // bf16.chunked dy's rows and the states t0..t1 (hs: bf16's) and cells into buffers of
    // one chunk.
    at::Tensor dy_chunk, h_chunk, c_chunk;
    if (bf16.chunked) {
      dy_chunk = at::empty({chunk, B, P}, opts);
      h_chunk = at::empty({chunk + 1, B, P}, opts);
      if (lstm) c_chunk = at::empty({chunk + 1, B, H}, opts);
    }
    const auto fill = [&] {
      const int64_t n = t1 - t0;
      if (n <= 0) return;
      if (bf16.acts.defined()) da.narrow(0, 0, n).copy_(bf16.acts.narrow(0, t0, n));
      if (recompute) recompute(t0, t1, da);
      if (!bf16.chunked) return;
      a.dy_pos0 = shape.reverse ? nT - t1 : t0;  // no lengths: every row at one position
      dy_chunk.narrow(0, 0, n).copy_(bf16.dy.narrow(0, a.dy_pos0, n));
      a.dy = dy_chunk.data_ptr<T>();
      if (!hs.in_y) {
        h_chunk.narrow(0, 0, n + 1).copy_(hs.saved.narrow(0, t0, n + 1));
      } else {  // state t is h0 (t = 0) or y[t - 1]
        h_chunk[0].copy_(t0 ? hs.saved[t0 - 1] : hs.h0);
        h_chunk.narrow(0, 1, n).copy_(hs.saved.narrow(0, t0, n));
      }
      if (lstm) c_chunk.narrow(0, 0, n + 1).copy_(bf16.cs.narrow(0, t0, n + 1));
    };
    fill();
    for (int64_t t = nT - 1; t >= 0; --t) {
      a.s.t = t;
      const int64_t base = ring ? t0 : 0;
      const bool last = t == nT - 1;
      a.k1 = last ? 0 : gru ? 2 * H : a.ld;
      a.k2_off = 3 * H;
      a.k2 = last || !gru ? 0 : H;
      a.da_next = last ? slot<T>(da, t - base)
                  : t + 1 == t1 ? carry.data_ptr<T>() : slot<T>(da, t + 1 - base);
      a.dh = dh.data_ptr<T>();
      if (bf16.chunked) {
        a.h_prev = slot<T>(h_chunk, t - t0);
        a.h_new = slot<T>(h_chunk, t + 1 - t0);
        a.c_prev = lstm ? slot<T>(c_chunk, t - t0) : nullptr;
        a.c_new = lstm ? slot<T>(c_chunk, t + 1 - t0) : nullptr;
      } else {
        a.h_prev = hs.template at_step<T>(t);
        a.h_new = hs.template at_step<T>(t + 1);
        a.c_prev = lstm ? slot<T>(cs, t) : nullptr;
        a.c_new = lstm ? slot<T>(cs, t + 1) : nullptr;
      }
      a.da = slot<T>(da, t - base);
      a.dh_prev = dh_next.data_ptr<T>();
      a.rows = active.at(t);
      a.plan = covering(plan, a.rows.n);
      for_items(a.plan.items(), item_flops(a.plan, a.k1 + a.k2),
                [&](int64_t i0, int64_t i1) { k.bwd(mode, a, i0, i1); });
      // Finished rows: no gate gradients (the GEMMs after the loop read them), dh and dc
      // pass through.
      ActivePrefix::for_finished(a.rows, B, [&](int64_t b) {
        std::memset(a.da + b * a.ld, 0, sizeof(T) * a.ld);
        std::memcpy(a.dh_prev + b * P, a.dh + b * P, sizeof(T) * P);
      });
      std::swap(dh, dh_next);
      if (t == t0) {
        if (t == 0) w_packed = at::Tensor();  // the sums' own buffers need not meet it
        hand_over(t0, t1);
        t1 = t0;
        t0 = std::max<int64_t>(0, t0 - chunk);
        fill();
      }
    }
    if (nT > 0) add_hidden_side_product<T>(dh, carry, w_hh, mode, H);
    // In row-block order, by hand: the same sums whatever the threads.
    db_sums = db_parts[0].clone();
    for (int64_t r = 1; r < row_blocks; ++r) db_sums.add_(db_parts[r]);
    return {dh, dc};
  }

  // LSTM with a projection: gy = (dh + dy) W_hr first, so the gate gradients need whole
  // rows of dh; the recurrent GEMM is a separate, packed GEMM per step. One chunk.
  TORCH_CHECK(!ring, "fused_rnn: internal: the projection's loop keeps every step's gradients");
  at::Tensor g = at::empty({B, P}, opts), gy = at::empty({B, H}, opts);
  const StepGemm<T> gemm_hh(w_hh, /*transpose=*/false, B);  // dh_prev += da W_hh
  for (int64_t t = nT - 1; t >= 0; --t) {
    a.s.t = t;
    const ProjBwdPre<T> p{a.s, dy.data_ptr<T>(), dh.data_ptr<T>(), g.data_ptr<T>(),
                          slot<T>(dhs, t)};
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) { k.proj_bwd_pre(p, b0, b1); });
    at::mm_out(gy, g, w_hr);
    a.dh = g.data_ptr<T>();
    a.gy = gy.data_ptr<T>();
    a.c_prev = slot<T>(cs, t);
    a.c_new = slot<T>(cs, t + 1);
    const at::Tensor da_t = da[t];
    a.da = da_t.data_ptr<T>();
    a.dh_prev = dh_next.data_ptr<T>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) { k.lstm_bwd_rows(a, b0, b1); });
    gemm_hh.run(da_t, dh_next, /*accumulate=*/true);
    std::swap(dh, dh_next);
  }
  hand_over(0, nT);
  return {dh, dc};
}

// Below this fraction of a chunk's rows active, its sums leave the finished ones out.
constexpr double kLeaveOutBelow = 0.9;

// Steps per chunk of the sums over steps. An RNN's gradients go to a buffer of one chunk:
// ~512 rows, two of the dW tiles' 256-row chunks (T=100, I=H=256 fwd+bwd peak: B=64 14.3
// MiB, 15.8 with 2048-row chunks, 19.4 with none; B=16 4.7, 5.5 with 2048: torch.nn 19.3 and
// 5.2; times within the noise, 28.3 vs 29.4 ms and 8.0 vs 8.3 ms). LSTM and GRU
// write theirs over the saved activations anyway: one chunk, after the loop's own buffers
// are gone (chunks kept W_ih's and W_hh's panels and dx alive together: +2.3 MiB at that
// shape, for no measured gain); their bf16 activations are widened into a buffer of one
// chunk, as an RNN's gradients are. Recomputed activations take chunks of 256 rows, one dW
// tile chunk: 1 MiB less at T=100, B=64, I=H=256 (LSTM 26.5 vs 27.5 MiB), in the same time
// (`benchmarks.ab`, 4 rounds: 63.1 vs 62.9 ms; GRU 48.9 vs 47.9, within the noise).
// FUSED_RNN_CPU_SUM_ROWS sets the rows per chunk (the tests force many chunks).
constexpr int64_t kSumRows = 512;
constexpr int64_t kRecomputeRows = 256;
int64_t chunk_steps(int64_t T, int64_t B, bool ring, int64_t default_rows) {
  static const char* env = std::getenv("FUSED_RNN_CPU_SUM_ROWS");
  const int64_t all = std::max<int64_t>(T, 1);
  if (!ring && !(env && *env)) return all;
  const int64_t rows = env && *env ? std::max<int64_t>(1, std::atoll(env)) : default_rows;
  const int64_t per_step = std::max<int64_t>(B, 1);  // an empty batch: any chunk will do
  return std::max<int64_t>(1, std::min<int64_t>(all, (rows + per_step - 1) / per_step));
}

// The rows of one chunk of steps [t0, t1) that its sums run over, row for row: the gate
// gradients D [R, ld] (loop order), the inputs x [R, I] and the states before each row's step.
// Reversed rows are gathered from and scattered to natural order on the narrow side (x, dx),
// never on the wide gate gradients. With lengths, the steps a row has finished are zero rows
// of every sum: when they are many (a PackedSequence of mixed lengths), the active rows are
// moved to the front of the chunk, in place, and the sums run over them alone.
struct SumRows {
  at::Tensor D, x;
  at::Tensor natural;  // [R] each row's row of dx; undefined: rows t0 * B on, in order
  at::Tensor h;        // [R, P] the states before each row's step, when rows were left out
  const States* hs;
  int64_t B, t0, t1;
  at::Tensor Dh;  // D rounded to bf16 where x is bf16 (then so are the weight and states)

  // dx's rows of this chunk: D's first K columns times w [K, N]. Through the step kernels'
  // tiles (w_packed: pack_bwd of w for `plan`): 16.0 vs 19.6 ms for MKL's at::mm (dx of
  // T=100, B=64, I=H=256 LSTM, 2 Zen 4 cores), rows landing where they belong, no gather.
  template <typename T>
  void add_dx(at::Tensor& dx, const at::Tensor& w, const at::Tensor& w_packed, TilePlan plan) const {
    const int64_t R = D.size(0), K = w.size(0), N = w.size(1);
    if (!w_packed.defined() && !Dh.defined() && small_rows<T>(R, w) && !natural.defined()) {
      small_product<T>(D.data_ptr<T>(), D.stride(0), R, w, dx.data_ptr<T>() + t0 * B * N, N,
                       /*transposed=*/false, /*accumulate=*/false);
      return;
    }
    if (!w_packed.defined()) {
      const at::Tensor rows = at::mm((Dh.defined() ? Dh : D).narrow(1, 0, K), w);
      if (natural.defined()) {
        dx.index_copy_(0, natural, rows);
      } else {
        dx.narrow(0, t0 * B, R).copy_(rows);
      }
      return;
    }
    tiles_times<T>(D.data_ptr<T>(), D.stride(0), R, K, w_packed, plan,
                   dx.data_ptr<T>() + (natural.defined() ? 0 : t0 * B * N), N,
                   natural.defined() ? natural.data_ptr<int64_t>() : nullptr);
  }
  // out [M, N] (=, or += with accumulate) = D's columns [col0, col0 + M)^T b over D's rows
  // [row0, row0 + b's rows), through tiles that read both in place (nothing to pack): dW_ih
  // and dW_hh of T=100, B=64, I=H=256 LSTM in 34.6 vs 38.6 ms for MKL's at::mm (2 Zen 4
  // cores); MKL took 1 ms to add h0's 64 rows, 0.3 ms here.
  template <typename T>
  void d_t_times(at::Tensor out, int64_t col0, const at::Tensor& b, int64_t row0,
                 bool accumulate) const {
    const int64_t K = b.size(0), M = out.size(0);
    const at::Tensor a = D.narrow(0, row0, K).narrow(1, col0, M);
    if (K == 0) {  // no rows: the tiles would leave out as it is
      if (!accumulate) out.zero_();
      return;
    }
    if (Dh.defined()) {
      const at::Tensor prod = at::mm(Dh.narrow(0, row0, K).narrow(1, col0, M).t(), b);
      accumulate ? out.add_(prod) : out.copy_(prod);
      return;
    }
    const ColsGemm<T> g{a.data_ptr<T>(), a.stride(0), M, b.data_ptr<T>(), b.stride(0), b.size(1),
                        K, out.data_ptr<T>(), out.stride(0), accumulate};
    const Kernels<T>& k = kernels<T>();
    const int64_t tiles = (M + k.cols_gemm_rows() - 1) / k.cols_gemm_rows();
    at::parallel_for(0, tiles, 1, [&](int64_t i0, int64_t i1) { k.cols_gemm(g, i0, i1); });
  }
  // out (=, or +=) D's columns [col0, col0 + out's rows)^T [the state before each row's
  // step]: the saved states' slots, or h0 then y (whose step t is h_{t+1}).
  template <typename T>
  void h_product(at::Tensor out, int64_t col0, bool accumulate) const {
    if (h.defined()) return d_t_times<T>(out, col0, h, 0, accumulate);
    const int64_t P = hs->h0.size(-1), n = t1 - t0;
    if (!hs->in_y) {
      return d_t_times<T>(out, col0, hs->saved.narrow(0, t0, n).view({n * B, P}), 0, accumulate);
    }
    if (t0 > 0) {
      return d_t_times<T>(out, col0, hs->saved.narrow(0, t0 - 1, n).view({n * B, P}), 0, accumulate);
    }
    d_t_times<T>(out, col0, hs->h0, 0, accumulate);
    if (n > 1) {
      d_t_times<T>(out, col0, hs->saved.narrow(0, 0, n - 1).view({(n - 1) * B, P}), B, true);
    }
  }
};

template <typename T>
SumRows sum_rows(const at::Tensor& rows, const at::Tensor& x2, const States& hs, int64_t nT,
                 int64_t B, bool reverse, const int64_t* len, int64_t t0, int64_t t1) {
  const int64_t n = t1 - t0, ld = rows.size(1);
  SumRows r{rows, x2.narrow(0, t0 * B, n * B), at::Tensor(), at::Tensor(), &hs, B, t0, t1};
  int64_t active = 0;
  for (int64_t b = 0; len && b < B; ++b) active += std::max<int64_t>(0, std::min(len[b], t1) - t0);
  const bool leave_out = len && active < kLeaveOutBelow * double(n * B);
  if (!reverse && !leave_out) return r;
  const auto long_opts = at::TensorOptions().dtype(at::kLong);
  const int64_t R = leave_out ? active : n * B;
  at::Tensor loop = at::empty({R}, long_opts), natural = at::empty({R}, long_opts);
  int64_t *lp = loop.data_ptr<int64_t>(), *np = natural.data_ptr<int64_t>();
  T* const d = rows.data_ptr<T>();
  int64_t k = 0;
  for (int64_t t = t0; t < t1; ++t) {
    const StepShape s{nT, B, 0, 0, t, reverse, len};
    for (int64_t b = 0; b < B; ++b) {
      if (leave_out && !s.active(b)) continue;
      const int64_t from = (t - t0) * B + b;
      lp[k] = t * B + b;
      np[k] = s.pos(b) * B + b;
      // Ascending, and each row's source at or after it: no unread row is overwritten.
      if (from != k) std::memcpy(d + k * ld, d + from * ld, sizeof(T) * ld);
      ++k;
    }
  }
  r.D = rows.narrow(0, 0, R);
  r.natural = natural;
  // Without a ring the chunk is the whole sequence: these copies are sequence-sized.
  r.x = gathered_rows(x2, natural);
  if (leave_out) {
    TORCH_CHECK(!hs.in_y, "fused_rnn: internal: with lengths the states are saved apart from y");
    // Slot t of the saved states, row b: the state before loop step t, at row t * B + b.
    r.h = gathered_rows(hs.saved.view({-1, hs.saved.size(2)}), loop);
  }
  return r;
}

// The sums over steps, chunk by chunk as the reverse loop hands them over: dx [T*B, I],
// dW_ih [G*H, I], dW_hh [G*H, P] (bias gradients: the loop's db_sums).
template <typename T>
struct StepSums {
  int64_t mode, nT, B, H;
  bool reverse;
  const int64_t* len;
  at::Tensor x2, w_ih;
  const States* hs;
  bool sum_biases;  // the gate gradients summed over rows too, into db (else the loop does)
  at::TensorOptions opts;  // of the gradients
  at::Tensor dx, dw_ih, dw_hh, db, w_packed;
  TilePlan plan{};
  bool accumulate = false;

  // At the first chunk, not before: the loop's buffers may be gone by then. With lengths a
  // chunk may leave rows of dx out: they stay zero (and all of it without a step). dx has
  // x's dtype (bf16 sums write bf16 rows), the weight gradients opts'.
  void allocate(int64_t GH, int64_t I, int64_t P, bool steps) {
    const bool zero = len || !steps;
    const auto dx_opts = opts.dtype(x2.scalar_type());
    dx = sequence_buffer({nT * B, I}, dx_opts);
    if (zero) dx.zero_();
    // dW_ih and dW_hh in one block: freed together (autograd adds both into .grad, then
    // drops them) two blocks merge at the top of glibc's heap into twice its trim threshold
    // and are handed back to the kernel, to fault in anew at the next call: a loop of
    // LSTMCell calls (B=16, I=H=512, 10 steps + backward) took 1.5x torch.nn's time, whose
    // two GEMMs return one weight gradient at a time. One block raises the thresholds to
    // its own size and stays; above glibc's largest threshold it would be mapped anew at
    // every call (LSTMCell B=64 I=H=1024, 32 MiB: 1.2-1.3x torch.nn's loop): those blocks
    // are pooled (gradient_pool.h).
    at::Tensor both = gradient_block(GH * (I + P), opts);
    if (!steps) both.zero_();
    dw_ih = both.narrow(0, 0, GH * I).view({GH, I});
    dw_hh = both.narrow(0, GH * I, GH * P).view({GH, P});
  }

  void operator()(int64_t t0, int64_t t1, const at::Tensor& rows) {
    if (!dx.defined()) allocate(w_ih.size(0), x2.size(1), hs->h0.size(-1), true);
    SumRows r = sum_rows<T>(rows, x2, *hs, nT, B, reverse, len, t0, t1);
    // bf16 operands (backward_bf16): oneDNN's GEMMs of bf16 products, fp32 sums.
    const bool half = x2.scalar_type() == at::kBFloat16;
    if (half) r.Dh = r.D.to(at::kBFloat16);
    const bool tiles = !half && r.D.size(0) >= kTilesMinRows;
    if (tiles && !w_packed.defined()) {
      plan = kernels<T>().bwd_plan(1, w_ih.size(1));
      w_packed = pack_bwd(w_ih, plan);
    }
    r.add_dx<T>(dx, w_ih, tiles ? w_packed : at::Tensor(), plan);
    r.d_t_times<T>(dw_ih, 0, r.x, 0, accumulate);
    if (mode == kGRU) {
      r.h_product<T>(dw_hh.narrow(0, 0, 2 * H), 0, accumulate);
      r.h_product<T>(dw_hh.narrow(0, 2 * H, H), 3 * H, accumulate);
    } else {
      r.h_product<T>(dw_hh, 0, accumulate);
    }
    if (sum_biases) db = accumulate ? db + r.D.sum(0) : r.D.sum(0);
    accumulate = true;
  }
};

template <typename T>
std::vector<at::Tensor> backward_impl(
    int64_t mode, bool reverse, const at::Tensor& x_, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths_, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& w_hr,
    const std::vector<at::Tensor>& saved, const at::Tensor& dy_, const at::Tensor& dh_n,
    const at::Tensor& dc_n, const Bf16Saved& bf16 = {}) {
  const int64_t nT = x_.size(0), B = x_.size(1), I = x_.size(2);
  const int64_t G = gate_count(mode), GH = w_ih.size(0), H = GH / G;
  const bool lstm = mode == kLSTM, gru = mode == kGRU;
  const bool proj = w_hr.defined();
  const int64_t P = proj ? w_hr.size(0) : H;
  const auto opts = h0.options();  // x_, w_ih, saved and dy_ may be bf16 (backward_bf16)
  const at::Tensor x = x_.contiguous();
  const at::Tensor dy = contiguous_sequence(dy_);
  const at::Tensor lengths = lengths_.defined() ? lengths_.contiguous() : lengths_;
  const int64_t* len = ptr<int64_t>(lengths);

  size_t n = 0;
  // LSTM and GRU: the saved activations [T, B, 4H] become the gate gradients, in place; an
  // RNN (nothing saved but its states) writes them into a buffer of one chunk of steps, and
  // so do bf16 activations (bf16.acts, then saved[0]), widened into it chunk by chunk, and
  // activations the forward did not keep (kSaveStates: saved[0] is [0, B, 4H]), recomputed
  // into it chunk by chunk.
  const bool recompute = act_count(mode) && saved[0].size(0) != nT;
  const bool ring = !act_count(mode) || bf16.acts.defined() || recompute;
  const int64_t chunk = proj ? std::max<int64_t>(nT, 1)
                      : chunk_steps(nT, B, ring, recompute ? kRecomputeRows : kSumRows);
  const int64_t ld = act_count(mode) ? saved[0].size(2) : H;
  const at::Tensor da = ring ? at::empty({chunk, B, ld}, opts) : saved[0];
  if (act_count(mode)) n++;
  const States hs(saved[n++], h0, nT);                                 // see States
  const at::Tensor cs = lstm ? saved[n++] : at::Tensor();              // [T+1, B, H]
  const at::Tensor ypre = proj ? saved[n++] : at::Tensor();            // [T, B, H]

  // The sums' states: bf16's with x and w_ih in bf16 (backward_bf16).
  const States sum_states = bf16.hs.defined() ? States(bf16.hs, bf16.h0, nT) : hs;
  StepSums<T> sums{mode, nT, B, H, reverse, len, x.view({nT * B, I}), w_ih, &sum_states,
                    proj && b_ih.defined(), opts};

  at::Tensor dhs = proj ? sequence_buffer({nT, B, P}, opts) : at::Tensor();
  const StepShape shape{nT, B, H, P, 0, reverse, len};
  std::optional<ActsRecompute<T>> acts_recompute;
  std::function<void(int64_t, int64_t, const at::Tensor&)> recompute_acts;
  if (recompute) {
    TORCH_CHECK(!proj && !bf16.acts.defined() && x.scalar_type() == da.scalar_type(),
                "fused_rnn: internal: activations are recomputed in fp32/fp64 without projection");
    acts_recompute.emplace(mode, shape, x, w_ih, w_hh, b_ih, b_hh, hs, cs);
    recompute_acts = [&](int64_t t0, int64_t t1, const at::Tensor& ring_da) {
      (*acts_recompute)(t0, t1, ring_da);
    };
  }
  at::Tensor dh0, dc0;
  at::Tensor db_sums;  // [ld] the gate gradients summed over steps and rows, or undefined
  std::tie(dh0, dc0) = backward_loop<T>(mode, shape, w_hh, w_hr, bf16.chunked ? sum_states : hs,
                                        cs, dy, dh_n, dc_n, da, ring, chunk, dhs, db_sums, sums,
                                        bf16, recompute_acts);

  if (!nT) sums.allocate(GH, I, P, false);
  at::Tensor db_ih = none_like(x), db_hh = none_like(x);
  if (b_ih.defined()) {
    const at::Tensor d_sums = db_sums.defined() ? db_sums
                              : sums.db.defined() ? sums.db : at::zeros({da.size(2)}, opts);
    db_ih = d_sums.narrow(0, 0, GH);
    db_hh = gru ? at::cat({d_sums.narrow(0, 0, 2 * H), d_sums.narrow(0, 3 * H, H)}) : db_ih.clone();
  }
  at::Tensor dw_hr = proj ? at::mm(dhs.view({nT * B, P}).t(), ypre.view({nT * B, H})) : none_like(x);
  return {sums.dx.view({nT, B, I}), dh0, lstm ? dc0 : none_like(x), sums.dw_ih, sums.dw_hh,
          db_ih, db_hh, dw_hr};
}

at::Tensor f32(const at::Tensor& t) { return t.defined() ? t.to(at::kFloat) : t; }

// bf16 inputs: the forward of fp32 math, outputs in float32 (the caller rounds them). Where
// the CPU has AVX512-BF16 (and I, P are even, no projection, more than one step) its GEMMs
// take x, the weights and the state as bf16 pairs, two products per instruction (the state
// rounded to bf16 for them at each step, as torch.nn's bf16 LSTM keeps it); else everything
// is widened to fp32 first.
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> forward_bf16(
    int64_t mode, bool reverse, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& w_hr, int64_t saves) {
  // Its backward widens what was saved; activations recomputed from bf16 states would not be
  // the forward's: kept.
  if (saves == kSaveStates) saves = kSaveAll;
  const bool pairs = bf16_pairs_fwd() && !w_hr.defined() && x.size(0) > 1 && x.size(2) % 2 == 0 &&
                     w_hh.size(1) % 2 == 0;
  if (!pairs) {
    return forward_impl<float>(mode, reverse, f32(x), f32(h0), f32(c0), lengths, f32(w_ih),
                               f32(w_hh), f32(b_ih), f32(b_hh), f32(w_hr), saves);
  }
  return forward_impl<float>(mode, reverse, x, f32(h0), f32(c0), lengths, w_ih.contiguous(),
                             w_hh.contiguous(), f32(b_ih), f32(b_hh), w_hr, saves,
                             h0.contiguous());
}

// bf16 inputs, saved tensors and output gradients: the backward of fp32 math, gradients in
// float32 (the caller rounds them) but dx, bf16 where the sums are. The reverse loop runs on
// widened copies; where the CPU has AVX512-BF16, the sums over steps (dx, dW_ih, dW_hh:
// three of the backward's four GEMMs) multiply bf16 operands (x, W_ih and the states as
// they are, the gate gradients rounded to bf16, as torch.nn's bf16 LSTM does) in oneDNN's
// GEMMs with fp32 sums: 2.3-3x the fp32 rate here.
std::vector<at::Tensor> backward_bf16(
    int64_t mode, bool reverse, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& w_hr,
    const std::vector<at::Tensor>& saved, const at::Tensor& dy, const at::Tensor& dh_n,
    const at::Tensor& dc_n) {
  const bool half_sums = bf16_pairs_fwd() != nullptr;
  // The activations go to the loop as they are (one chunk for the projection's loop: widened);
  // with the bf16 sums (which read the bf16 states), no lengths and no projection, so do the
  // states, cells and dy.
  const bool acts_in_ring = act_count(mode) && !w_hr.defined();
  const bool chunked = half_sums && !lengths.defined() && !w_hr.defined();
  const size_t hs_at = act_count(mode) ? 1 : 0;
  std::vector<at::Tensor> saved32;
  for (size_t i = 0; i < saved.size(); ++i) {
    const bool as_is = (i == 0 && acts_in_ring) || (chunked && i >= hs_at);
    saved32.push_back(as_is ? saved[i] : f32(saved[i]));
  }
  Bf16Saved half;
  if (acts_in_ring) half.acts = saved[0];
  if (half_sums) {
    half.hs = saved[hs_at];
    half.h0 = h0.contiguous();
  }
  if (chunked) {
    half.chunked = true;
    half.dy = contiguous_sequence(dy);
    if (mode == kLSTM) half.cs = saved[hs_at + 1];
  }
  return backward_impl<float>(mode, reverse, half_sums ? x.contiguous() : f32(x), f32(h0), f32(c0),
                              lengths, half_sums ? w_ih : f32(w_ih), f32(w_hh), f32(b_ih),
                              f32(b_hh), f32(w_hr), saved32, chunked ? dy : f32(dy), f32(dh_n),
                              f32(dc_n), half);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> recurrence_forward(
    int64_t mode, bool reverse, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& w_hr, int64_t saves) {
  if (x.scalar_type() == at::kBFloat16) {
    return forward_bf16(mode, reverse, x, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, w_hr, saves);
  }
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_rnn::recurrence_forward", [&] {
    return forward_impl<scalar_t>(mode, reverse, x, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh,
                                  w_hr, saves);
  });
}

void panel_cache_scope(bool enter) { panel_cache().scope(enter); }

std::vector<at::Tensor> recurrence_backward(
    int64_t mode, bool reverse, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& lengths, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& w_hr,
    const std::vector<at::Tensor>& saved, const at::Tensor& dy, const at::Tensor& dh_n,
    const at::Tensor& dc_n) {
  if (x.scalar_type() == at::kBFloat16) {
    return backward_bf16(mode, reverse, x, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh, w_hr, saved,
                         dy, dh_n, dc_n);
  }
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_rnn::recurrence_backward", [&] {
    return backward_impl<scalar_t>(mode, reverse, x, h0, c0, lengths, w_ih, w_hh, b_ih, b_hh,
                                   w_hr, saved, dy, dh_n, dc_n);
  });
}

}  // namespace cpu
}  // namespace fused_rnn
