// The allocator behind sequence_buffers.h.
#include "sequence_buffers.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fused_rnn {
namespace cpu {
#ifdef __linux__
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kMappedBytes = size_t(32) << 20;

struct Block {
  void* ptr;
  size_t bytes;
};

std::atomic<size_t> g_live{0};  // bytes handed out, for the profiler

// The profiler's memory events (torch.profiler's profile_memory, benchmarks/measure.py's
// peak) see these buffers as ATen's allocator's.
void report(void* ptr, int64_t bytes) {
  const size_t live = g_live.fetch_add(static_cast<size_t>(bytes)) + static_cast<size_t>(bytes);
  c10::reportMemoryUsageToProfiler(ptr, bytes, live, 0, c10::Device(c10::DeviceType::CPU));
}

void release(void* ctx) {
  Block* b = static_cast<Block*>(ctx);
  report(b->ptr, -static_cast<int64_t>(b->bytes));
  std::free(b->ptr);
  delete b;
}

// FUSED_RNN_CPU_HUGE_PAGES=0 leaves every buffer to ATen (benchmarks.ab's comparison, or a
// system where the kernel's compaction for huge pages stalls).
bool enabled() {
  static const bool on = [] {
    const char* env = std::getenv("FUSED_RNN_CPU_HUGE_PAGES");
    return !(env && std::strcmp(env, "0") == 0);
  }();
  return on;
}

struct HugePageAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    if (n < kMappedBytes || !enabled()) return c10::GetDefaultCPUAllocator()->allocate(n);
    void* ptr = nullptr;
    TORCH_CHECK_WITH(OutOfMemoryError, posix_memalign(&ptr, kHugePage, n) == 0,
                     "fused_rnn: out of memory allocating ", n, " bytes");
#ifdef MADV_HUGEPAGE
    madvise(ptr, n, MADV_HUGEPAGE);  // advice only: without THP the pages stay 4 KiB
#endif
    report(ptr, static_cast<int64_t>(n));
    return {ptr, new Block{ptr, n}, &release, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const {
    std::memcpy(dest, src, count);
  }
};

HugePageAllocator& allocator() {
  static HugePageAllocator* a = new HugePageAllocator();  // outlives every tensor
  return *a;
}

}  // namespace

at::Tensor sequence_buffer(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return at::detail::empty_generic(sizes, &allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   opts.dtype().toScalarType(), std::nullopt);
}
#else
at::Tensor sequence_buffer(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return at::empty(sizes, opts);
}
#endif

at::Tensor contiguous_sequence(const at::Tensor& t) {
  if (t.is_contiguous()) return t;
  at::Tensor out = sequence_buffer(t.sizes(), t.options());
  out.copy_(t);
  return out;
}

at::Tensor gathered_rows(const at::Tensor& src, const at::Tensor& index) {
  at::Tensor out = sequence_buffer({index.size(0), src.size(1)}, src.options());
  at::index_select_out(out, src, 0, index);
  return out;
}

}  // namespace cpu
}  // namespace fused_rnn
