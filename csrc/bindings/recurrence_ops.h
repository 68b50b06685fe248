// The cpu backend's checked recurrence ops (csrc/bindings/recurrence.cpp), for the other
// bindings that run them without the dispatcher (cell_step.cpp).
#pragma once

#include "torch_library.h"

#include <tuple>
#include <vector>

namespace fused_rnn {

// torch.ops.fused_rnn.recurrence_forward: (y, h_n, c_n, saved).
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> recurrence_forward(
    int64_t mode, bool reverse, const at::Tensor& x, const at::Tensor& h0,
    const c10::optional<at::Tensor>& c0, const c10::optional<at::Tensor>& lengths,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_hr,
    int64_t saves);

// torch.ops.fused_rnn.recurrence_backward: (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr).
std::vector<at::Tensor> recurrence_backward(
    int64_t mode, bool reverse, const at::Tensor& x, const at::Tensor& h0,
    const c10::optional<at::Tensor>& c0, const c10::optional<at::Tensor>& lengths,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_hr,
    at::TensorList saved, const at::Tensor& dy, const c10::optional<at::Tensor>& dh_n,
    const c10::optional<at::Tensor>& dc_n);

}  // namespace fused_rnn
