from .attention import AdditiveAttention, LuongAttention
from .cell import GRUCell, LSTMCell, RNNCell
from .layer_norm_rnn import LayerNormGRU, LayerNormLSTM
from .rnn import GRU, LSTM, RNN

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "AdditiveAttention",
           "LuongAttention", "LayerNormLSTM", "LayerNormGRU"]
