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
 *   lock waiter hand over to the lock holder. __shfl_down_sync and __shfl_sync exchange values
 *   through the warp's slots between two such meetings, as a warp's lanes do.
 * - Warp collectives are checked as a GPU needs them: a __syncwarp or shuffle (full mask) must find
 *   every lane of its warp there, at the same kind of collective. A lane that has returned while
 *   the others wait at one, a lane arriving at one that another lane has left by returning, or a
 *   shuffle met by a __syncwarp, is a fault: the launch reports cudaErrorLaunchFailure (from
 *   cudaGetLastError, with what happened in cudaGetErrorString) instead of hanging, as a GPU might,
 *   or reading a value no lane gave.
 * - The threads of a block run in order (lane 0 first after each meeting), or with
 *   LAZYADAM_EMULATION_REVERSE defined in reverse order, blocks too: a result that depends on the
 *   interleaving (a lane reading what another writes with no barrier between them, two warps on one
 *   row) differs between the two builds.
 * - Atomics are the host compiler's atomics, so separate OS threads running launches at once (as
 *   use_locking allows) see real atomicity.
 * - Small LAZYADAM_CHUNK and LAZYADAM_MAX_BLOCKS make small test arrays cross chunk edges and make
 *   grid-stride loops go round more than once.
 * - CUB's device-wide algorithms that the launchers call (a stable radix sort of pairs, a run-length
 *   encode, an exclusive sum) are stand-ins with the same contract, temporary storage included.
 * - The toolkit's 16-bit types (__nv_bfloat16, __half) and their conversions: float16 through the host
 *   compiler's _Float16 (IEEE round to nearest even, done by other code than the C kernels'), bfloat16
 *   by the same rule on the bits; a NaN becomes the canonical 0x7fff, as on a GPU.
 * - Counters that tests read (emu_counters): launches (a CUB call counts as one), host waits (a stream
 *   or event synchronization, or a copy to pageable host memory), and the most additions of the
 *   summation order (LAZYADAM_ADD) that one thread made in one launch: what would be slow on a GPU.
 * - Stream capture, as a CUDA graph records it: between emu_begin_capture and emu_end_capture the
 *   work queued (launches, CUB calls, copies, memsets) is recorded with its arguments, not run, and
 *   emu_replay runs the recording again; a host wait while capturing is an error, as on a GPU
 *   (cudaErrorStreamCaptureUnsupported), and so is a pageable copy to the host. The driver's
 *   cuStreamIsCapturing answers for it. The emulation's state is shared by every emulation library
 *   of the process (GCC makes inline variables unique symbols), so one capture spans all kernels.
 * - With LAZYADAM_EMULATION_NO_KERNELS defined, launches (and CUB calls) are counted and not run: the
 *   host side of a step alone, as benchmarks/bench_host.py times it.
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

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <mutex>
#include <numeric>
#include <set>
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
typedef struct CUevent_st *cudaEvent_t;
#define cudaEventDisableTiming 2
enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorLaunchFailure = 719,
    cudaErrorStreamCaptureUnsupported = 900,
};
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
enum cudaMemoryType { cudaMemoryTypeUnregistered = 0, cudaMemoryTypeHost = 1, cudaMemoryTypeDevice = 2 };
struct cudaPointerAttributes {
    enum cudaMemoryType type;
    int device;
    void *devicePointer, *hostPointer;
};

namespace emu {
/* What the tests count (see emu_counters). */
inline long long launches = 0, host_waits = 0, max_adds = 0;
/* Host memory from cudaMallocHost: a copy into it does not make the host wait. */
inline std::mutex pinned_mutex;
inline std::set<const void *> pinned;

/* The work recorded by the capture under way (null when none), and by the last one ended. */
inline std::vector<std::function<void()>> *recording = nullptr;
inline std::vector<std::function<void()>> graph;
/* Device memory allocated while capturing: the graph's own, freed with it (its frees are no-ops). */
inline std::set<void *> graph_memory;
inline thread_local cudaError_t last_error = cudaSuccess;
/* What the first fault of a launch on this OS thread was (see the top), for cudaGetErrorString. */
inline thread_local char fault_message[192];  /* fits the kernels' messages after the error name */

inline cudaError_t record(cudaError_t err)
{
    if (err != cudaSuccess)
        last_error = err;
    return err;
}
/* A host wait; while capturing, the error a GPU gives. */
inline cudaError_t count_wait()
{
    __atomic_add_fetch(&host_waits, 1, __ATOMIC_RELAXED);
    return record(recording ? cudaErrorStreamCaptureUnsupported : cudaSuccess);
}
inline void count_launch() { __atomic_add_fetch(&launches, 1, __ATOMIC_RELAXED); }
/* Runs `work` now, or records it in the capture under way. */
inline void enqueue(std::function<void()> work)
{
    if (recording)
        recording->push_back(std::move(work));
    else
        work();
}
/* Set by the tests (emu_fail_next_malloc) to check that a failed scratch allocation writes nothing. */
inline int fail_next_malloc = 0;
}  // namespace emu

inline cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t)
{
    if (__atomic_exchange_n(&emu::fail_next_malloc, 0, __ATOMIC_SEQ_CST)) {
        *p = nullptr;
        return emu::record(cudaErrorMemoryAllocation);
    }
    *p = malloc(bytes ? bytes : 1);
    if (*p && emu::recording)
        emu::graph_memory.insert(*p);
    return emu::record(*p ? cudaSuccess : cudaErrorMemoryAllocation);
}
inline cudaError_t cudaFreeAsync(void *p, cudaStream_t)
{
    if (!emu::graph_memory.count(p))
        free(p);
    return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t)
{
    emu::enqueue([=] { memset(p, value, bytes); });
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t)
{
    if (kind == cudaMemcpyDeviceToHost) {
        std::lock_guard<std::mutex> hold(emu::pinned_mutex);
        if (!emu::pinned.count(dst) && emu::count_wait() != cudaSuccess)
            return cudaErrorStreamCaptureUnsupported;  /* to pageable memory, a GPU copy returns only once it is done */
    }
    emu::enqueue([=] { memcpy(dst, src, bytes); });
    return cudaSuccess;
}
inline cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    *p = malloc(bytes ? bytes : 1);
    if (!*p)
        return emu::record(cudaErrorMemoryAllocation);
    std::lock_guard<std::mutex> hold(emu::pinned_mutex);
    emu::pinned.insert(*p);
    return cudaSuccess;
}
inline cudaError_t cudaFreeHost(void *p)
{
    {
        std::lock_guard<std::mutex> hold(emu::pinned_mutex);
        emu::pinned.erase(p);
    }
    free(p);
    return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return emu::count_wait(); }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned)
{
    *event = reinterpret_cast<cudaEvent_t>(new char);
    return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return emu::count_wait(); }
inline cudaError_t cudaEventDestroy(cudaEvent_t event)
{
    delete reinterpret_cast<char *>(event);
    return cudaSuccess;
}
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
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}
inline const char *cudaGetErrorString(cudaError_t err)
{
    if (err == cudaErrorLaunchFailure)
        return emu::fault_message;
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

/* --- cuda_bf16.h and cuda_fp16.h: the storage types and the conversions the kernels use ---------- */
struct __nv_bfloat16 {
    unsigned short x;
};
struct __half {
    unsigned short x;
};
static_assert(sizeof(__nv_bfloat16) == 2 && sizeof(__half) == 2, "16-bit storage");

inline float __bfloat162float(__nv_bfloat16 h)
{
    const uint32_t u = (uint32_t)h.x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return __nv_bfloat16{0x7fff};
    const uint32_t lsb = (u >> 16) & 1u;
    return __nv_bfloat16{(unsigned short)((u + 0x7fffu + lsb) >> 16)};
}
inline float __half2float(__half h)
{
    _Float16 value;
    memcpy(&value, &h.x, sizeof value);
    return (float)value;
}
inline __half __float2half_rn(float f)
{
    if (f != f)
        return __half{0x7fff};
    const _Float16 value = (_Float16)f;
    __half h;
    memcpy(&h.x, &value, sizeof h.x);
    return h;
}

/* --- threads, blocks and barriers ------------------------------------------------------------- */
namespace emu {
constexpr unsigned WARP = 32;
constexpr size_t STACK_BYTES = 64 * 1024;

/* What a warp's lanes meet at (a block's threads meet at NONE: __syncthreads is not checked). */
enum Collective { NONE, SYNCWARP, SHUFFLE };

struct Barrier {
    unsigned live = 0, arrived = 0, generation = 0;
    unsigned size = 0;              /* the threads launched into it */
    Collective kind = NONE;         /* what the lanes that arrived in this generation meet at */
};

struct Thread {
    ucontext_t context;
    dim3 index;
    unsigned linear = 0;
    bool done = false;
    long long adds = 0;  /* LAZYADAM_ADD calls */
};

struct Block {
    std::vector<Thread> threads;
    Barrier block;
    std::vector<Barrier> warps;
    std::vector<std::array<unsigned long long, WARP>> exchange;  /* each warp's shuffle slots */
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

/* Records the first fault of a launch: the launch reports cudaErrorLaunchFailure. */
inline void fault(const char *what)
{
    if (last_error != cudaErrorLaunchFailure)
        snprintf(fault_message, sizeof fault_message, "emulated fault in block %u, thread %u: %s",
                 block_idx.x, current->linear, what);
    last_error = cudaErrorLaunchFailure;
}

inline void wait(Barrier &b, Collective kind = NONE)
{
    if (kind != NONE) {
        if (b.live < b.size)
            fault("a warp collective that a lane of the warp has left by returning");
        else if (b.arrived > 0 && b.kind != kind)
            fault("lanes of a warp at different collectives (a shuffle and a __syncwarp)");
        b.kind = kind;
    }
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
    long long most = __atomic_load_n(&max_adds, __ATOMIC_RELAXED);
    while (current->adds > most && !__atomic_compare_exchange_n(&max_adds, &most, current->adds, false,
                                                                 __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
    Barrier &warp = block->warps[current->linear / WARP];
    if (warp.arrived > 0 && warp.kind != NONE)
        fault("a lane returned while the other lanes of its warp wait at a warp collective");
    block->block.live--;
    warp.live--;
    release_if_complete(block->block);
    release_if_complete(warp);
}

/* Runs `body` for every thread of every block; blocks one after another, threads as coroutines. */
inline void run(dim3 grid, dim3 threads, const std::function<void()> &body)
{
    const unsigned n = threads.x * threads.y * threads.z;
    count_launch();
#ifdef LAZYADAM_EMULATION_NO_KERNELS
    (void)body;
    return;
#endif
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
            for (unsigned x = 0; x < grid.x; x++) {
#ifdef LAZYADAM_EMULATION_REVERSE
                const unsigned bx = grid.x - 1 - x;
#else
                const unsigned bx = x;
#endif
                block_idx = dim3(bx, by, bz);
                b.block = Barrier{n, 0, 0};
                b.warps.assign((n + WARP - 1) / WARP, Barrier{});
                b.exchange.assign((n + WARP - 1) / WARP, {});
                for (unsigned i = 0; i < n; i++) {
                    Thread &t = b.threads[i];
                    t.linear = i;
                    t.index = dim3(i % threads.x, i / threads.x % threads.y, i / (threads.x * threads.y));
                    t.done = false;
                    t.adds = 0;
                    b.warps[i / WARP].live++;
                    b.warps[i / WARP].size++;
                    getcontext(&t.context);
                    t.context.uc_stack.ss_sp = &stacks[i * STACK_BYTES];
                    t.context.uc_stack.ss_size = STACK_BYTES;
                    t.context.uc_link = &b.scheduler;
                    makecontext(&t.context, thread_main, 0);
                }
                for (unsigned live = n; live > 0;) {
                    live = 0;
                    for (unsigned i = 0; i < n; i++) {
#ifdef LAZYADAM_EMULATION_REVERSE
                        Thread &t = b.threads[n - 1 - i];
#else
                        Thread &t = b.threads[i];
#endif
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

    /* Runs the kernel, or records it with copies of its arguments while capturing. */
    template <class... Args>
    void operator()(Args... args) const
    {
        const unsigned n = threads.x * threads.y * threads.z;
        if (n == 0 || grid.x * grid.y * grid.z == 0 || n > 1024) {
            last_error = cudaErrorInvalidConfiguration;
            return;
        }
        const Launch self = *this;
        enqueue([self, args...] { run(self.grid, self.threads, [&] { self.kernel(args...); }); });
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
inline void __syncwarp(unsigned = 0xffffffffu)
{
    emu::wait(emu::block->warps[emu::current->linear / emu::WARP], emu::SYNCWARP);
}
inline void __nanosleep(unsigned) { emu::yield(); }

namespace emu {
/* A warp shuffle: every lane puts `value` in its slot, the warp meets, each lane reads lane
 * `from`'s slot (its own value when `from` is past the warp), and the warp meets again before
 * the slots are reused. */
template <class T>
inline T exchange(T value, unsigned from)
{
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffles move up to 8 bytes");
    auto &slots = block->exchange[current->linear / WARP];
    Barrier &warp = block->warps[current->linear / WARP];
    std::memcpy(&slots[current->linear % WARP], &value, sizeof(T));
    wait(warp, SHUFFLE);
    T out = value;
    if (from < WARP)
        std::memcpy(&out, &slots[from], sizeof(T));
    wait(warp, SHUFFLE);
    return out;
}
}  // namespace emu

template <class T>
inline T __shfl_down_sync(unsigned, T value, unsigned delta, int = emu::WARP)
{
    return emu::exchange(value, emu::current->linear % emu::WARP + delta);
}
template <class T>
inline T __shfl_sync(unsigned, T value, int lane, int = emu::WARP)
{
    return emu::exchange(value, (unsigned)lane);
}
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

inline unsigned long long atomicMax(unsigned long long *p, unsigned long long value)
{
    unsigned long long old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (value > old && !__atomic_compare_exchange_n(p, &old, value, false, __ATOMIC_SEQ_CST,
                                                       __ATOMIC_SEQ_CST))
        ;
    return old;
}

#define LAZYADAM_ADD(a, b) (::emu::current->adds++, (a) + (b))

/* --- CUB's device-wide algorithms, as stand-ins with the same contract ----------------------- */
namespace cub {
namespace detail {
/* As CUB: with no storage, say how much is needed; with too little, refuse. */
inline bool storage(void *temp, size_t &bytes, size_t needed, cudaError_t &status)
{
    status = cudaSuccess;
    if (!temp) {
        bytes = needed;
        return false;
    }
    if (bytes < needed) {
        status = emu::record(cudaErrorInvalidValue);
        return false;
    }
#ifdef LAZYADAM_EMULATION_NO_KERNELS
    emu::count_launch();
    return false;
#else
    return true;
#endif
}
}  // namespace detail

struct DeviceRadixSort {
    /* A stable sort of the pairs by bits [begin_bit, end_bit) of the key. */
    template <class Key, class Value, class Count>
    static cudaError_t SortPairs(void *temp, size_t &bytes, const Key *keys_in, Key *keys_out,
                                 const Value *values_in, Value *values_out, Count n, int begin_bit = 0,
                                 int end_bit = int(8 * sizeof(Key)), cudaStream_t = 0)
    {
        cudaError_t status;
        if (!detail::storage(temp, bytes, size_t(n) * (sizeof(Key) + sizeof(Value) + sizeof(size_t)), status))
            return status;
        const Key mask = end_bit - begin_bit >= int(8 * sizeof(Key)) ? ~Key(0)
                                                                   : Key((Key(1) << (end_bit - begin_bit)) - 1);
        emu::enqueue([=] {
            emu::count_launch();
            std::vector<size_t> order(n);
            std::iota(order.begin(), order.end(), size_t(0));
            std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
                return ((keys_in[a] >> begin_bit) & mask) < ((keys_in[b] >> begin_bit) & mask);
            });
            std::vector<Key> keys(n);
            std::vector<Value> values(n);
            for (size_t i = 0; i < size_t(n); i++) {
                keys[i] = keys_in[order[i]];
                values[i] = values_in[order[i]];
            }
            std::copy(keys.begin(), keys.end(), keys_out);
            std::copy(values.begin(), values.end(), values_out);
        });
        return cudaSuccess;
    }
};

struct DeviceRunLengthEncode {
    /* Each run of equal items: its item, its length, and the number of runs. */
    template <class In, class Unique, class Lengths, class Runs>
    static cudaError_t Encode(void *temp, size_t &bytes, In in, Unique unique, Lengths lengths, Runs runs,
                              int n, cudaStream_t = 0)
    {
        cudaError_t status;
        if (!detail::storage(temp, bytes, 64, status))
            return status;
        emu::enqueue([=] {
            emu::count_launch();
            long long count = 0;
            for (int i = 0; i < n; i++) {
                if (i == 0 || !(in[i] == in[i - 1])) {
                    unique[count] = in[i];
                    lengths[count++] = 0;
                }
                lengths[count - 1] += 1;
            }
            *runs = count;
        });
        return cudaSuccess;
    }
};

struct DeviceScan {
    template <class In, class Out, class Count>
    static cudaError_t ExclusiveSum(void *temp, size_t &bytes, In in, Out out, Count n, cudaStream_t = 0)
    {
        cudaError_t status;
        if (!detail::storage(temp, bytes, 64, status))
            return status;
        emu::enqueue([=] {
            emu::count_launch();
            auto sum = in[0] - in[0];
            for (Count i = 0; i < n; i++) {
                const auto item = in[i];
                out[i] = sum;
                sum += item;
            }
        });
        return cudaSuccess;
    }
};
}  // namespace cub

/* What the tests count: launches, host waits, and the most additions one thread made in a launch. */
extern "C" __attribute__((visibility("default"))) void emu_counters(long long *counts)
{
    counts[0] = __atomic_load_n(&emu::launches, __ATOMIC_SEQ_CST);
    counts[1] = __atomic_load_n(&emu::host_waits, __ATOMIC_SEQ_CST);
    counts[2] = __atomic_load_n(&emu::max_adds, __ATOMIC_SEQ_CST);
}
extern "C" __attribute__((visibility("default"))) void emu_reset_counters(void)
{
    __atomic_store_n(&emu::launches, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&emu::host_waits, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&emu::max_adds, 0, __ATOMIC_SEQ_CST);
}

/* Stream capture (see the top): begin, end (the number of operations recorded), replay (the last
 * recording; returns the first error it met), and the driver's question whether a stream captures. */
extern "C" __attribute__((visibility("default"))) void emu_begin_capture(void)
{
    for (void *p : emu::graph_memory)
        free(p);
    emu::graph_memory.clear();
    emu::graph.clear();
    emu::recording = &emu::graph;
}
extern "C" __attribute__((visibility("default"))) long long emu_end_capture(void)
{
    emu::recording = nullptr;
    return (long long)emu::graph.size();
}
extern "C" __attribute__((visibility("default"))) int emu_replay(void)
{
    emu::last_error = cudaSuccess;
    for (const auto &work : emu::graph)
        work();
    return cudaGetLastError();
}
extern "C" __attribute__((visibility("default"))) int cuStreamIsCapturing(void *, int *status)
{
    *status = emu::recording != nullptr;
    return 0;
}

/* Lets a test make the next scratch allocation fail. */
extern "C" __attribute__((visibility("default"))) void emu_fail_next_malloc(void) { __atomic_store_n(&emu::fail_next_malloc, 1, __ATOMIC_SEQ_CST); }

#endif /* LAZYADAM_CUDA_EMULATION_H */
