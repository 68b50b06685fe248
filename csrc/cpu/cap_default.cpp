// The pointwise kernels compiled for any x86-64 / other CPU (ATen's DEFAULT vector width).
#define FUSED_RNN_CAP_NS cap_default
#include "kernels_impl.h"
#include "attention_impl.h"
#include "variant_kernels_impl.h"
