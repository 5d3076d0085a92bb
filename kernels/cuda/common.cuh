// Shared device code for fusegate's kernels (compiled at run time by NVRTC; the Rust side splices
// this header into each .cu in place of the line that includes it, so nothing is looked up
// on disk; nvcc finds it with -I kernels/cuda).
//
// Numerics are spelled out with explicit intrinsics wherever the compiler could otherwise contract
// a multiply and an add into one FMA: the rounding points must be exactly the CPU emulation's
// (kernels/src/cpu.rs) and PyTorch's (NUMERICS.md).
#pragma once
#include <cuda_bf16.h>

namespace fg {

typedef __nv_bfloat16 bf16;
typedef unsigned int u32;

// Where the norm rounds before the GEMM (registry.rs NormRounding).
enum Norm {
    NORM_HF = 0,     // A = bf16(x*r); B = bf16(w*A)            (HF Qwen3RMSNorm)
    NORM_ONCE = 1,   // B = bf16((x*r)*w)                         (FlashInfer / TRT-LLM style)
    NORM_SKIPW = 2,  // B = A = bf16(x*r)                         (forgets the weight)
    NORM_F32 = 3     // operand = (x*r)*w in fp32, never rounded  (fp32 throughout)
};

// How a mutant breaks (registry.rs Fault).
enum Fault {
    FAULT_NONE = 0,
    FAULT_UNWRITTEN = 1,  // q's middle element (flat index T*Nq*D/2) is never stored
    FAULT_EARLY_X = 2     // decode kernels read x BEFORE griddepcontrol.wait: right in a serial
                          // launch, a race when chained (the late-writer probe must catch it)
};

// The kernel ABI every fused wrapper shares, gathered in one struct.
struct Args {
    const bf16* __restrict__ x;      // [T, H]
    const bf16* __restrict__ w_norm; // [H]
    const bf16* __restrict__ w_qkv;  // [N, H] row-major, N = (Nq + 2 Nkv) D
    bf16* __restrict__ q;            // [T, Nq*D]
    bf16* __restrict__ k;            // [T, Nkv*D]
    bf16* __restrict__ v;            // [T, Nkv*D]
    bf16* __restrict__ b_out;        // nullable [T, H]: debug copy of B
    float* __restrict__ inv_rms_out; // nullable [T]
    int T, H, Nq, Nkv, D;
    float eps;
};

#define FG_PARAMS                                                                              \
    const __nv_bfloat16 *x, const __nv_bfloat16 *w_norm, const __nv_bfloat16 *w_qkv,          \
        __nv_bfloat16 *q, __nv_bfloat16 *k, __nv_bfloat16 *v, __nv_bfloat16 *b_out,           \
        float *inv_rms_out, int T, int H, int Nq, int Nkv, int D, float eps
#define FG_ARGS                                                                                \
    fg::Args { x, w_norm, w_qkv, q, k, v, b_out, inv_rms_out, T, H, Nq, Nkv, D, eps }

// ---------------------------------------------------------------------------------------------
// bf16 <-> fp32. A u32 holds a bf16 pair: element 0 (lower address) in the low half.
__device__ __forceinline__ float bf_lo(u32 p) { return __uint_as_float(p << 16); }
__device__ __forceinline__ float bf_hi(u32 p) { return __uint_as_float(p & 0xffff0000u); }
__device__ __forceinline__ float bf2f(bf16 v) { return __bfloat162float(v); }
// Round to nearest even, both halves (one cvt.rn.bf16x2.f32, the same rounding as
// __float2bfloat16_rn and half::bf16::from_f32).
__device__ __forceinline__ u32 pack_rn(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// ---------------------------------------------------------------------------------------------
// Memory helpers.
__device__ __forceinline__ u32 smem_addr(const void* p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}
// 16-byte global -> shared copy that bypasses registers; src_bytes = 0 zero-fills the slot.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void prefetch_l1(const void* p) {
    asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}
__device__ __forceinline__ uint4 ldg16(const void* p) {
    return __ldg(reinterpret_cast<const uint4*>(p));
}
// A 16-byte load of data the previous grid may have written (an activation, in a chained launch):
// coherent, never ld.global.nc, which the compiler may schedule above griddepcontrol.wait (it did:
// NOTES.md v11).
__device__ __forceinline__ uint4 ldg16_fresh(const void* p) {
    uint4 r;
    asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p)
                 : "memory");
    return r;
}
__device__ __forceinline__ uint4 lds16(const void* p) { return *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ void sts16(void* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }

// Bulk (TMA) copies into shared memory, completed on an mbarrier (sm_90; the kernels that use
// them are only launched there, and trap elsewhere). One thread issues a copy of any multiple of
// 16 bytes; the copy engine, not registers, holds it in flight.
#if __CUDA_ARCH__ >= 900
#define FG_SM90(...) __VA_ARGS__
#else
#define FG_SM90(...) __trap()
#endif
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    FG_SM90(asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n"
                         "fence.mbarrier_init.release.cluster;\n" ::"r"(bar),
                         "r"(count)
                         : "memory"));
}
// One arrival that also announces `bytes` of copies still to land: the phase completes when
// they have.
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
    FG_SM90(asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(bar),
                         "r"(bytes)
                         : "memory"));
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    FG_SM90(asm volatile("{\n .reg .pred done;\n"
                         "WAIT:\n mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n @!done bra WAIT;\n}\n" ::"r"(
                             bar),
                         "r"(parity)
                         : "memory"));
}
__device__ __forceinline__ void bulk_g2s(u32 dst, const void* src, u32 bytes, u32 bar) {
    FG_SM90(asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                             dst),
                         "l"(src), "r"(bytes), "r"(bar)
                         : "memory"));
}

// A hint to bring [p, p + bytes) into L2 (p and bytes multiples of 16). No effect on what any
// load returns: L2 is where every SM's writes meet, so it may be issued before
// griddepcontrol.wait on data the previous grid is still writing. Nothing below sm_90.
__device__ __forceinline__ void bulk_prefetch_l2(const void* p, u32 bytes) {
#if __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// Programmatic dependent launch (sm_90; both are no-ops when the grid was launched without the
// attribute): let the next grid in the stream start, and wait until the previous one has
// finished and its writes are visible.
__device__ __forceinline__ void griddep_launch_dependents() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void griddep_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// mma.sync m16n8k16, bf16 inputs, fp32 accumulate in place. Register contents (PTX ISA):
// a0 (row g, k 2c..2c+1), a1 (row g+8, same k), a2 (row g, k 2c+8..), a3 (row g+8, k 2c+8..);
// b0 (k 2c..2c+1, col g), b1 (k 2c+8.., col g); d0,d1 (row g, cols 2c,2c+1), d2,d3 (row g+8),
// where g = lane/4 and c = lane%4.
__device__ __forceinline__ void mma16816(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------------------------------------
// RMSNorm pieces.

// 1/H as PyTorch's mean computes it (fp32 reciprocal, correctly rounded), then
// r = rsqrtf(sum * (1/H) + eps) with the multiply and add kept apart (no FMA contraction).
__device__ __forceinline__ float inv_rms_from_sum(float sum, int H, float eps) {
    const float inv_h = __fdiv_rn(1.0f, static_cast<float>(H));
    return rsqrtf(__fadd_rn(__fmul_rn(sum, inv_h), eps));
}

// Whether every 16-byte vector access of the fused kernels is legal: rows of x and W start on
// 16-byte boundaries only when H % 8 == 0 and the base pointers are 16-byte aligned.
__device__ __forceinline__ bool vec16_ok(const Args& a) {
    const unsigned long long m = reinterpret_cast<unsigned long long>(a.x) |
                                 reinterpret_cast<unsigned long long>(a.w_norm) |
                                 reinterpret_cast<unsigned long long>(a.w_qkv);
    return (a.H & 7) == 0 && (m & 15) == 0;
}

// inv_rms of rows t0 .. t0+ROWS-1 (0 for rows past T) into s_r. Warp per row; each lane sums
// the squares of its own elements in increasing k (x*x is exact in fp32, so fmaf equals
// mul-then-add), then a xor butterfly. The order depends on H and the vector path only, never
// on T or on the tile: batch-invariant. RB (up to 8) rows per warp at once keep 2*RB loads in
// flight: this prologue is a chain of L2 round trips before the first MMA.
template <int ROWS, int NWARPS>
__device__ __forceinline__ void block_inv_rms(const Args& a, int t0, bool vec, float* s_r) {
    constexpr int PER_WARP = (ROWS + NWARPS - 1) / NWARPS;
    constexpr int RB = PER_WARP >= 8 ? 8 : (PER_WARP >= 4 ? 4 : (PER_WARP >= 2 ? 2 : 1));
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int rb = warp * RB; rb < ROWS; rb += NWARPS * RB) {
        float acc[RB];
        bool live[RB];
        const bf16* row[RB];
#pragma unroll
        for (int i = 0; i < RB; ++i) {
            const int t = t0 + rb + i;
            live[i] = (rb + i < ROWS) && t < a.T;
            row[i] = a.x + static_cast<size_t>(live[i] ? t : 0) * a.H;
            acc[i] = 0.f;
        }
        if (vec) {
#pragma unroll 2
            for (int k = lane * 8; k < a.H; k += 256) {
                uint4 u[RB];
#pragma unroll
                for (int i = 0; i < RB; ++i) u[i] = live[i] ? ldg16(row[i] + k) : make_uint4(0, 0, 0, 0);
#pragma unroll
                for (int i = 0; i < RB; ++i) {
                    const u32 w4[4] = {u[i].x, u[i].y, u[i].z, u[i].w};
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const float f0 = bf_lo(w4[j]), f1 = bf_hi(w4[j]);
                        acc[i] = fmaf(f0, f0, acc[i]);
                        acc[i] = fmaf(f1, f1, acc[i]);
                    }
                }
            }
        } else {
            for (int k = lane; k < a.H; k += 32) {
#pragma unroll
                for (int i = 0; i < RB; ++i) {
                    const float f = live[i] ? bf2f(row[i][k]) : 0.f;
                    acc[i] = fmaf(f, f, acc[i]);
                }
            }
        }
#pragma unroll
        for (int i = 0; i < RB; ++i) {
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
            if (lane == 0 && rb + i < ROWS) s_r[rb + i] = live[i] ? inv_rms_from_sum(acc[i], a.H, a.eps) : 0.f;
        }
    }
}

// Both halves of a bf16 pair times the other pair's, each rounded once to nearest even
// (mul.rn.bf16x2, sm_90). The product of two bf16 values is exact in fp32, so this equals
// bf16(float(w) * float(a)): HF's bf16 * bf16 multiply, subnormals included (bf16 arithmetic
// has no flush-to-zero).
__device__ __forceinline__ u32 mul_bf16x2(u32 a, u32 b) {
    u32 r;
    asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

// The GEMM operand for a bf16 pair of x (one row, inv_rms r) and the matching pair of the norm
// weight, with NORM's rounding points.
template <int NORM>
__device__ __forceinline__ u32 norm_pair(u32 xp, u32 wp, float r) {
    const float n0 = __fmul_rn(bf_lo(xp), r), n1 = __fmul_rn(bf_hi(xp), r);
    if (NORM == NORM_HF) {
        return mul_bf16x2(wp, pack_rn(n0, n1));  // B = bf16(w * A), A = bf16(x * r)
    } else if (NORM == NORM_ONCE) {
        return pack_rn(__fmul_rn(n0, bf_lo(wp)), __fmul_rn(n1, bf_hi(wp)));
    } else {  // NORM_SKIPW
        return pack_rn(n0, n1);
    }
}

// Eight consecutive elements of a bf16 row starting at k, zeros past `len` (scalar path).
__device__ __forceinline__ uint4 load8_scalar(const bf16* row, int k, int len) {
    u32 p[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int k0 = k + 2 * j;
        const unsigned short lo = k0 < len ? __bfloat16_as_ushort(row[k0]) : 0;
        const unsigned short hi = k0 + 1 < len ? __bfloat16_as_ushort(row[k0 + 1]) : 0;
        p[j] = static_cast<u32>(lo) | (static_cast<u32>(hi) << 16);
    }
    return make_uint4(p[0], p[1], p[2], p[3]);
}

// Shared-memory tile of ROWS x BK bf16 stored as 16-byte units. When a row holds at least 8
// units, odd rows swap the two 64-byte halves of every 128 bytes: the fragment loads (two rows,
// four 16-byte units each, per quarter warp) then hit all 32 banks once.
template <int BK>
__device__ __forceinline__ int tile_off(int row, int unit) {
    constexpr int UPR = BK / 8;
    const int u = UPR >= 8 ? (unit ^ ((row & 1) << 2)) : unit;
    return (row * UPR + u) * 8;  // in bf16 elements
}

// Starts the copy of a ROWS x BK tile of a row-major [nrows, H] bf16 matrix (rows r0.., columns
// k0..) into `tile`, zero-filled past nrows and H. Vector path: cp.async (completes with the
// caller's commit/wait); otherwise plain loads and stores (complete at once).
template <int ROWS, int BK, int NTHREADS>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* __restrict__ src, int nrows, int H, int r0,
                                          int k0, bool vec) {
    constexpr int UPR = BK / 8;
    constexpr int UNITS = ROWS * UPR;
#pragma unroll
    for (int i = 0; i < (UNITS + NTHREADS - 1) / NTHREADS; ++i) {
        const int unit = threadIdx.x + i * NTHREADS;
        if (UNITS % NTHREADS == 0 || unit < UNITS) {
            const int row = unit / UPR, u = unit % UPR;
            const int r = r0 + row, k = k0 + u * 8;
            bf16* dst = tile + tile_off<BK>(row, u);
            if (vec) {
                const bool ok = r < nrows && k < H;
                cp_async16(dst, ok ? src + static_cast<size_t>(r) * H + k : src, ok);
            } else {
                const uint4 val = r < nrows ? load8_scalar(src + static_cast<size_t>(r) * H, k, H)
                                            : make_uint4(0, 0, 0, 0);
                sts16(dst, val);
            }
        }
    }
}

// Starts the copy of the norm weight's k0 .. k0+BK into `dst` (BK bf16, zeros past H), so that
// the per-k-tile normalisation reads it from shared memory instead of paying an L2 round trip.
template <int BK>
__device__ __forceinline__ void load_wnorm(bf16* dst, const Args& a, int k0, bool vec) {
    const int u = threadIdx.x;
    if (u < BK / 8) {
        const int k = k0 + u * 8;
        if (vec) cp_async16(dst + u * 8, k < a.H ? a.w_norm + k : a.w_norm, k < a.H);
        else sts16(dst + u * 8, load8_scalar(a.w_norm, k, a.H));
    }
}

// Output column n (and n+1) of the fused [T, N] result: q, then k, then v.
struct OutPtr {
    bf16* p;
    int idx;  // flat index within q, k or v
    bool is_q;
};
__device__ __forceinline__ OutPtr out_ptr(const Args& a, int t, int n) {
    const int qw = a.Nq * a.D, kw = a.Nkv * a.D;
    if (n < qw) return {a.q, t * qw + n, true};
    if (n < qw + kw) return {a.k, t * kw + (n - qw), false};
    return {a.v, t * kw + (n - qw - kw), false};
}

// Stores columns n, n+1 of row t (n even; a pair never straddles q/k/v since D is even).
// FAULT_UNWRITTEN skips q's element T*Nq*D/2.
template <int FAULT>
__device__ __forceinline__ void store_pair(const Args& a, int t, int n, float v0, float v1) {
    const OutPtr o = out_ptr(a, t, n);
    if (FAULT == FAULT_UNWRITTEN && o.is_q) {
        const int skip = a.T * a.Nq * a.D / 2;
        if (o.idx == skip || o.idx + 1 == skip) {
            if (o.idx != skip) o.p[o.idx] = __float2bfloat16_rn(v0);
            if (o.idx + 1 != skip) o.p[o.idx + 1] = __float2bfloat16_rn(v1);
            return;
        }
    }
    *reinterpret_cast<u32*>(o.p + o.idx) = pack_rn(v0, v1);
}

}  // namespace fg
