// The pool of gradient_pool.h: a few free blocks, reused by exact size, newest first.
#include "gradient_pool.h"

#include <c10/core/Allocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstddef>
#include <iterator>
#include <mutex>
#include <utility>
#include <vector>

namespace fused_rnn {
namespace cpu {
namespace {

constexpr size_t kKeep = 2;
constexpr size_t kPooledBytes = size_t(4) << 20;

struct Pool {
  std::mutex mu;
  std::vector<std::pair<size_t, void*>> free;  // (bytes, block), oldest first
  size_t live = 0;                              // bytes handed out, for the profiler
};

// Never destroyed: a gradient may be dropped after static destructors ran (at exit).
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

// The profiler's memory events (torch.profiler's profile_memory, benchmarks/measure.py's
// peak) see a pooled block as ATen's allocator's: allocated when handed out, freed when
// given back.
void report(Pool& p, void* ptr, int64_t bytes) {
  c10::reportMemoryUsageToProfiler(ptr, bytes, p.live, 0, c10::Device(c10::DeviceType::CPU));
}

void* take(size_t bytes) {
  Pool& p = pool();
  void* ptr = nullptr;
  {
    std::lock_guard<std::mutex> lock(p.mu);
    for (auto it = p.free.rbegin(); it != p.free.rend(); ++it) {
      if (it->first == bytes) {
        ptr = it->second;
        p.free.erase(std::next(it).base());
        break;
      }
    }
  }
  if (ptr == nullptr) ptr = c10::alloc_cpu(bytes);
  std::lock_guard<std::mutex> lock(p.mu);
  p.live += bytes;
  report(p, ptr, static_cast<int64_t>(bytes));
  return ptr;
}

void give_back(void* ptr, size_t bytes) {
  Pool& p = pool();
  void* evicted = nullptr;
  {
    std::lock_guard<std::mutex> lock(p.mu);
    p.live -= bytes;
    report(p, ptr, -static_cast<int64_t>(bytes));
    if (p.free.size() == kKeep) {
      evicted = p.free.front().second;
      p.free.erase(p.free.begin());
    }
    p.free.emplace_back(bytes, ptr);
  }
  if (evicted != nullptr) c10::free_cpu(evicted);
}

}  // namespace

at::Tensor gradient_block(int64_t numel, const at::TensorOptions& opts) {
  const size_t bytes = static_cast<size_t>(numel) * opts.dtype().itemsize();
  if (bytes < kPooledBytes) return at::empty({numel}, opts);
  void* ptr = take(bytes);
  return at::from_blob(
      ptr, {numel}, [bytes](void* q) { give_back(q, bytes); }, opts.device(at::kCPU));
}

}  // namespace cpu
}  // namespace fused_rnn
