// The standard (unfused) path's kernels: HF Qwen3RMSNorm as its own kernel, writing B [T, H]
// bf16 and inv_rms [T] f32 for the cuBLAS GEMM(s) that follow, and the split of one GEMM's
// [T, N] output into q | k | v (at small T; plan.rs `standard_gemm`).
//
// Launch rules (cuda.rs `Plan::standard` encodes them):
//   fusegate_hf_rmsnorm: grid = T blocks (one row each), block = 256 threads, no dynamic smem.
//   fusegate_split_qkv:  grid = ceil(T*N/2 / 256) blocks, block = 256 threads (one pair each).
#include "common.cuh"

namespace fg {
constexpr int NORM_THREADS = 256;
}

// One row per block. Sum of squares: thread i takes the elements of 16-byte chunks i, i+256, ...
// (8 elements each, in increasing k; single elements i, i+256, ... where H % 8 != 0 or a pointer
// is not 16-byte aligned), then warp xor butterflies and the 8 warp sums in a fixed order:
// deterministic and independent of T.
// A = bf16(x * r), B = bf16(w * A), r = rsqrtf(sum * (1/H) + eps): HF's rounding points.
extern "C" __global__ void __launch_bounds__(fg::NORM_THREADS)
    fusegate_hf_rmsnorm(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                        __nv_bfloat16* __restrict__ b_out, float* __restrict__ inv_rms_out, int T, int H, float eps) {
    __shared__ float s_part[fg::NORM_THREADS / 32];
    __shared__ float s_r;
    const int t = blockIdx.x;
    if (t >= T || blockDim.x != fg::NORM_THREADS) return;
    const __nv_bfloat16* row = x + static_cast<size_t>(t) * H;
    __nv_bfloat16* out = b_out + static_cast<size_t>(t) * H;
    typedef unsigned long long addr;
    const bool vec = H % 8 == 0 &&
                     ((reinterpret_cast<addr>(x) | reinterpret_cast<addr>(w) | reinterpret_cast<addr>(b_out)) & 15) == 0;
    float acc = 0.f;
    if (vec) {
        for (int c = threadIdx.x; c < H / 8; c += fg::NORM_THREADS) {
            const uint4 v = fg::ldg16(row + 8 * c);
            const fg::u32 ps[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                acc = fmaf(fg::bf_lo(ps[j]), fg::bf_lo(ps[j]), acc);  // squares are exact in fp32
                acc = fmaf(fg::bf_hi(ps[j]), fg::bf_hi(ps[j]), acc);
            }
        }
    } else {
        for (int k = threadIdx.x; k < H; k += fg::NORM_THREADS) {
            const float f = fg::bf2f(row[k]);
            acc = fmaf(f, f, acc);
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) s_part[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < fg::NORM_THREADS / 32; ++i) sum += s_part[i];
        s_r = fg::inv_rms_from_sum(sum, H, eps);
        if (inv_rms_out != nullptr) inv_rms_out[t] = s_r;
    }
    __syncthreads();
    const float r = s_r;
    // B = bf16(w * bf16(x * r)), element by element (round to nearest even at both points).
    const auto b_of = [r](float xv, float wv) {
        return __fmul_rn(wv, __bfloat162float(__float2bfloat16_rn(__fmul_rn(xv, r))));
    };
    if (vec) {
        for (int c = threadIdx.x; c < H / 8; c += fg::NORM_THREADS) {
            const uint4 xv = fg::ldg16(row + 8 * c), wv = fg::ldg16(w + 8 * c);
            const fg::u32 xs[4] = {xv.x, xv.y, xv.z, xv.w}, ws[4] = {wv.x, wv.y, wv.z, wv.w};
            fg::u32 bs[4];
#pragma unroll
            for (int j = 0; j < 4; ++j)
                bs[j] = fg::pack_rn(b_of(fg::bf_lo(xs[j]), fg::bf_lo(ws[j])), b_of(fg::bf_hi(xs[j]), fg::bf_hi(ws[j])));
            *reinterpret_cast<uint4*>(out + 8 * c) = make_uint4(bs[0], bs[1], bs[2], bs[3]);
        }
    } else {
        for (int k = threadIdx.x; k < H; k += fg::NORM_THREADS)
            out[k] = __float2bfloat16_rn(b_of(fg::bf2f(row[k]), fg::bf2f(w[k])));
    }
}

// out [T, N] (N = (Nq + 2 Nkv) D) -> q [T, Nq*D], k [T, Nkv*D], v [T, Nkv*D], one bf16 pair per
// thread (N and D are even, so a pair never straddles two outputs).
extern "C" __global__ void __launch_bounds__(256)
    fusegate_split_qkv(const __nv_bfloat16* __restrict__ out, __nv_bfloat16* __restrict__ q,
                       __nv_bfloat16* __restrict__ k, __nv_bfloat16* __restrict__ v, int T, int Nq, int Nkv, int D) {
    const int N = (Nq + 2 * Nkv) * D, qw = Nq * D, kw = Nkv * D;
    const long long pairs = static_cast<long long>(T) * N / 2;
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= pairs) return;
    const int t = static_cast<int>(2 * i / N), n = static_cast<int>(2 * i % N);
    const unsigned int val = reinterpret_cast<const unsigned int*>(out)[i];
    __nv_bfloat16* dst;
    if (n < qw) dst = q + static_cast<size_t>(t) * qw + n;
    else if (n < qw + kw) dst = k + static_cast<size_t>(t) * kw + (n - qw);
    else dst = v + static_cast<size_t>(t) * kw + (n - qw - kw);
    *reinterpret_cast<unsigned int*>(dst) = val;
}
