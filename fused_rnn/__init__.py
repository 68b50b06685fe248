"""fused_rnn: fused kernels for recurrent networks and encoder-decoder attention, behind
drop-in replacements for torch.nn's modules."""

from . import functional
from .backends import (BackendError, available_backends, backend_report, current_backend,
                       set_backend, use_backend)
from .convert import convert
from .recompute import recompute_enabled, set_recompute, use_recompute
from .modules import (GRU, LSTM, RNN, AdditiveAttention, AttentionDecoder, AttentionDecoderCell,
                      GRUCell, LayerNormGRU, LayerNormLSTM, LSTMCell, LuongAttention, RNNCell)
from .modules.recurrent_weights import dense_to_headwise, headwise_to_dense

__version__ = "0.1.0"

__all__ = [
    "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "AdditiveAttention",
    "LuongAttention", "LayerNormLSTM", "LayerNormGRU", "functional", "convert", "set_backend",
    "use_backend", "set_recompute", "use_recompute", "recompute_enabled",
    "available_backends", "backend_report", "current_backend", "BackendError",
    "headwise_to_dense", "dense_to_headwise",
    "AttentionDecoderCell", "AttentionDecoder",
]
