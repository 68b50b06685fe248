// The signatures of the ops that one Python launcher drives for two backends
// (fused_rnn/ops/*/native.py's extension_launchers): the cpu backend's and the cuda
// backend's ops of a family share them, name apart. Used as m.def(name + signature).
#pragma once

namespace fused_rnn {
namespace schema {

constexpr const char* kRecurrenceForward =
    "(int mode, bool reverse, Tensor x, Tensor h0, Tensor? c0, Tensor? lengths, Tensor w_ih, "
    "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, int saves) "
    "-> (Tensor, Tensor, Tensor, Tensor[])";
constexpr const char* kRecurrenceBackward =
    "(int mode, bool reverse, Tensor x, Tensor h0, Tensor? c0, Tensor? lengths, Tensor w_ih, "
    "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, Tensor[] saved, Tensor dy, "
    "Tensor? dh_n, Tensor? dc_n) -> Tensor[]";
constexpr const char* kVariantForward =
    "(int mode, bool reverse, Tensor x, Tensor h0, Tensor? c0, Tensor? lengths, Tensor w_ih, "
    "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? ln_ih, Tensor? ln_hh, "
    "Tensor? ln_c_weight, Tensor? ln_c_bias, Tensor? keep_h, Tensor? keep_c, bool need_saved) "
    "-> (Tensor, Tensor, Tensor, Tensor[])";
constexpr const char* kVariantBackward =
    "(int mode, bool reverse, Tensor x, Tensor h0, Tensor? c0, Tensor? lengths, Tensor w_ih, "
    "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? ln_ih, Tensor? ln_hh, "
    "Tensor? ln_c_weight, Tensor? ln_c_bias, Tensor? keep_h, Tensor? keep_c, Tensor[] saved, "
    "Tensor dy, Tensor? dh_n, Tensor? dc_n) -> Tensor[]";
constexpr const char* kAttentionForward =
    "(Tensor query, Tensor keys, Tensor values, Tensor? lengths, Tensor? mask, Tensor? v, "
    "bool additive, float scale, bool need_weights) -> (Tensor, Tensor, Tensor)";
constexpr const char* kAttentionBackward =
    "(Tensor query, Tensor keys, Tensor values, Tensor? lengths, Tensor? mask, Tensor? v, "
    "bool additive, float scale, Tensor lse, Tensor dctx, Tensor? dweights) -> Tensor[]";

}  // namespace schema
}  // namespace fused_rnn
