// A thread block as the per-row kernels see it, and its host stand-in, so that one body of
// code is both the kernel and what the tests run without a GPU.
//
// A row kernel's body is written against a Block `blk`:
//   for (int64_t j = blk.rank(); j < n; j += blk.size()) ...   each thread its share
//   s = blk.sum(s);                                              every thread gets the total
//   blk.sync();                                                  writes before it are seen after
// DeviceBlock is the CUDA block (threadIdx.x, blockDim.x, warp shuffles and __syncthreads);
// HostBlock is one thread that is the whole block (rank 0, size 1; sum and sync are the
// identity), which runs the same body on the CPU. The host run checks the math and the
// indexing, not the barriers: compute-sanitizer's racecheck does that on a GPU.
#pragma once

#include <stdint.h>

#include "cell_math.cuh"

namespace fused_rnn {
namespace cuda {

// Two sums in one reduction (a mean and a second moment, two dot products).
template <typename A>
struct Pair {
  A x, y;
};

struct HostBlock {
  int64_t rank() const { return 0; }
  int64_t size() const { return 1; }
  void sync() const {}
  template <typename A>
  A sum(A v) const {
    return v;
  }
};

#if defined(__CUDACC__)
// red: 64 slots of A in shared memory (a Pair's two halves per warp), owned by this block.
template <typename A>
struct DeviceBlock {
  A* red;
  __device__ int64_t rank() const { return threadIdx.x; }
  __device__ int64_t size() const { return blockDim.x; }
  __device__ void sync() const { __syncthreads(); }
  __device__ A sum(A v) const {
    const Pair<A> r = sum(Pair<A>{v, A(0)});
    return r.x;
  }
  __device__ Pair<A> sum(Pair<A> v) const {
    for (int o = 16; o > 0; o >>= 1) {
      v.x += __shfl_xor_sync(0xffffffffu, v.x, o);
      v.y += __shfl_xor_sync(0xffffffffu, v.y, o);
    }
    __syncthreads();  // red may still be read from the previous reduction
    if ((threadIdx.x & 31) == 0) {
      red[threadIdx.x >> 5] = v.x;
      red[32 + (threadIdx.x >> 5)] = v.y;
    }
    __syncthreads();  // also publishes every write made before the reduction
    Pair<A> r{red[0], red[32]};
    for (unsigned w = 1; w < (blockDim.x + 31) / 32; ++w) {
      r.x += red[w];
      r.y += red[32 + w];
    }
    return r;
  }
};
#endif

}  // namespace cuda
}  // namespace fused_rnn
