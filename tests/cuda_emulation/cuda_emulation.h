/* Host emulation of the CUDA subset the generated kernels use, so that the same .cu source (kernels
 * and launchers) builds with the host C++ compiler and runs on the CPU:
 *
 *     g++ -std=c++17 -include cuda_emulation.h -x c++ kernel.cu -shared -fPIC -o kernel.so
 *
 * - "Device" memory is host memory: cudaMallocAsync is malloc, copies are memcpy, streams are no-ops.
 * - LAZYADAM_LAUNCH(kernel, grid, block, stream)(args...) walks the grid block by block; the threads
 *   of a block run as coroutines (ucontext) on the calling OS thread, each on its own stack, so that
 *   __syncthreads and __syncwarp are real barriers: a thread that reaches one yields until every
 *   live thread of its block (or warp) has arrived. __nanosleep yields too, which lets a spinning
 *   lock waiter hand over to the lock holder.
 * - Atomics are the host compiler's atomics, so separate OS threads running launches at once (as
 *   use_locking allows) see real atomicity.
 * - Small LAZYADAM_CHUNK and LAZYADAM_MAX_BLOCKS make small test arrays cross chunk edges and make
 *   grid-stride loops go round more than once.
 */
#ifndef LAZYADAM_CUDA_EMULATION_H
#define LAZYADAM_CUDA_EMULATION_H
#define LAZYADAM_CUDA_EMULATION 1

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

#ifndef LAZYADAM_CHUNK
#define LAZYADAM_CHUNK 64
#endif
#ifndef LAZYADAM_MAX_BLOCKS
#define LAZYADAM_MAX_BLOCKS 3
#endif

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

/* --- the runtime API subset ------------------------------------------------------------------- */
typedef struct CUstream_st *cudaStream_t;
enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
};
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
enum cudaMemoryType { cudaMemoryTypeUnregistered = 0, cudaMemoryTypeHost = 1, cudaMemoryTypeDevice = 2 };
struct cudaPointerAttributes {
    enum cudaMemoryType type;
    int device;
    void *devicePointer, *hostPointer;
};

namespace emu {
inline thread_local cudaError_t last_error = cudaSuccess;
/* Set by the tests (emu_fail_next_malloc) to check that a failed scratch allocation writes nothing. */
inline int fail_next_malloc = 0;

inline cudaError_t record(cudaError_t err)
{
    if (err != cudaSuccess)
        last_error = err;
    return err;
}
}  // namespace emu

inline cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t)
{
    if (__atomic_exchange_n(&emu::fail_next_malloc, 0, __ATOMIC_SEQ_CST)) {
        *p = nullptr;
        return emu::record(cudaErrorMemoryAllocation);
    }
    *p = malloc(bytes ? bytes : 1);
    return emu::record(*p ? cudaSuccess : cudaErrorMemoryAllocation);
}
inline cudaError_t cudaFreeAsync(void *p, cudaStream_t) { free(p); return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t)
{
    memset(p, value, bytes);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind, cudaStream_t)
{
    memcpy(dst, src, bytes);
    return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaGetLastError()
{
    const cudaError_t err = emu::last_error;
    emu::last_error = cudaSuccess;
    return err;
}
inline const char *cudaGetErrorName(cudaError_t err)
{
    switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    }
    return "cudaErrorUnknown";
}
inline const char *cudaGetErrorString(cudaError_t err)
{
    return err == cudaErrorMemoryAllocation ? "out of memory (emulated)" : "emulated CUDA error";
}
inline cudaError_t cudaGetDevice(int *device) { *device = 0; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *attr, const void *p)
{
    attr->type = cudaMemoryTypeDevice;
    attr->device = 0;
    attr->devicePointer = attr->hostPointer = const_cast<void *>(p);
    return cudaSuccess;
}

/* --- threads, blocks and barriers ------------------------------------------------------------- */
namespace emu {
constexpr unsigned WARP = 32;
constexpr size_t STACK_BYTES = 64 * 1024;

struct Barrier {
    unsigned live = 0, arrived = 0, generation = 0;
};

struct Thread {
    ucontext_t context;
    dim3 index;
    unsigned linear = 0;
    bool done = false;
};

struct Block {
    std::vector<Thread> threads;
    Barrier block;
    std::vector<Barrier> warps;
    ucontext_t scheduler;
    const std::function<void()> *body = nullptr;
};

inline thread_local Block *block = nullptr;
/* Coroutine stacks, grown on demand and kept for the next launch on this OS thread. */
inline thread_local std::vector<char> stacks;
inline thread_local Thread *current = nullptr;
inline thread_local dim3 block_idx, block_dim, grid_dim;

inline void yield() { swapcontext(&current->context, &block->scheduler); }

inline void release_if_complete(Barrier &b)
{
    if (b.arrived > 0 && b.arrived == b.live) {
        b.arrived = 0;
        b.generation++;
    }
}

inline void wait(Barrier &b)
{
    const unsigned generation = b.generation;
    b.arrived++;
    release_if_complete(b);
    while (b.generation == generation)
        yield();
}

inline void thread_main()
{
    (*block->body)();
    current->done = true;
    Barrier &warp = block->warps[current->linear / WARP];
    block->block.live--;
    warp.live--;
    release_if_complete(block->block);
    release_if_complete(warp);
}

/* Runs `body` for every thread of every block; blocks one after another, threads as coroutines. */
inline void run(dim3 grid, dim3 threads, const std::function<void()> &body)
{
    const unsigned n = threads.x * threads.y * threads.z;
    if (n == 0 || grid.x * grid.y * grid.z == 0 || n > 1024) {
        last_error = cudaErrorInvalidConfiguration;
        return;
    }
    Block *outer_block = block;
    Thread *outer_thread = current;
    Block b;
    b.threads.resize(n);
    if (stacks.size() < n * STACK_BYTES)
        stacks.resize(n * STACK_BYTES);
    b.body = &body;
    block = &b;
    grid_dim = grid;
    block_dim = threads;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                block_idx = dim3(bx, by, bz);
                b.block = Barrier{n, 0, 0};
                b.warps.assign((n + WARP - 1) / WARP, Barrier{});
                for (unsigned i = 0; i < n; i++) {
                    Thread &t = b.threads[i];
                    t.linear = i;
                    t.index = dim3(i % threads.x, i / threads.x % threads.y, i / (threads.x * threads.y));
                    t.done = false;
                    b.warps[i / WARP].live++;
                    getcontext(&t.context);
                    t.context.uc_stack.ss_sp = &stacks[i * STACK_BYTES];
                    t.context.uc_stack.ss_size = STACK_BYTES;
                    t.context.uc_link = &b.scheduler;
                    makecontext(&t.context, thread_main, 0);
                }
                for (unsigned live = n; live > 0;) {
                    live = 0;
                    for (Thread &t : b.threads) {
                        if (t.done)
                            continue;
                        current = &t;
                        swapcontext(&b.scheduler, &t.context);
                        live += !t.done;
                    }
                }
            }
    block = outer_block;
    current = outer_thread;
}

template <class Kernel>
struct Launch {
    Kernel *kernel;
    dim3 grid, threads;

    template <class... Args>
    void operator()(Args... args) const
    {
        run(grid, threads, [&] { kernel(args...); });
    }
};
}  // namespace emu

#define threadIdx (::emu::current->index)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define LAZYADAM_LAUNCH(kernel, grid, block, stream) \
    ::emu::Launch<decltype(kernel)>{&kernel, dim3(grid), dim3(block)}

inline void __syncthreads() { emu::wait(emu::block->block); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::wait(emu::block->warps[emu::current->linear / emu::WARP]); }
inline void __nanosleep(unsigned) { emu::yield(); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

inline int atomicCAS(int *p, int expected, int desired)
{
    __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}
inline int atomicExch(int *p, int value) { return __atomic_exchange_n(p, value, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicMin(unsigned long long *p, unsigned long long value)
{
    unsigned long long old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (value < old && !__atomic_compare_exchange_n(p, &old, value, false, __ATOMIC_SEQ_CST,
                                                       __ATOMIC_SEQ_CST))
        ;
    return old;
}

/* Lets a test make the next scratch allocation fail. */
extern "C" __attribute__((visibility("default"))) void emu_fail_next_malloc(void) { __atomic_store_n(&emu::fail_next_malloc, 1, __ATOMIC_SEQ_CST); }

#endif /* LAZYADAM_CUDA_EMULATION_H */
