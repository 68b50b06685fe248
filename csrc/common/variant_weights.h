// The parameters of one layer and direction of the variant recurrences (LayerNorm LSTM/GRU,
// zoneout; fused_rnn/ops/variants/layout.py), as the cpu loops (csrc/cpu/variant_recurrence.h)
// and the cuda backend's (csrc/stepwise/variant_loop.h) take them: contiguous, undefined
// where absent; G gates (4 LSTM, 3 GRU).
#pragma once

#include <ATen/core/Tensor.h>

namespace fused_rnn {

struct VariantWeightTensors {
  at::Tensor w_ih;          // [G*H, I]
  at::Tensor w_hh;          // [G*H, H]
  at::Tensor b_ih, b_hh;    // [G*H] both or neither
  at::Tensor ln_ih, ln_hh;  // [G*H] gains: layer norm when defined
  at::Tensor ln_cw, ln_cb;  // [H] LSTM with layer norm: gain and shift of LN(c~)
  bool layer_norm() const { return ln_ih.defined(); }
};

}  // namespace fused_rnn
