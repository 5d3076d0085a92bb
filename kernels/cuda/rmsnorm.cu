// The standard (unfused) path's kernels: HF Qwen3RMSNorm as its own kernel, writing B [T, H]
// bf16 and inv_rms [T] f32 for the cuBLAS GEMM that follows, and the split of the GEMM's [T, N]
// output into q | k | v.
//
// Launch rules (cuda.rs `Plan::standard` encodes them):
//   fusegate_hf_rmsnorm: grid = T blocks (one row each), block = 256 threads, no dynamic smem.
//   fusegate_split_qkv:  grid = ceil(T*N/2 / 256) blocks, block = 256 threads (one pair each).
#include "common.cuh"

namespace fg {
constexpr int NORM_THREADS = 256;
}

// One row per block. Sum of squares: thread i takes elements i, i+256, ... in increasing k, then
// warp xor butterflies and the 8 warp sums in a fixed order: deterministic and independent of T.
// A = bf16(x * r), B = bf16(w * A), r = rsqrtf(sum * (1/H) + eps): HF's rounding points.
extern "C" __global__ void __launch_bounds__(fg::NORM_THREADS)
    fusegate_hf_rmsnorm(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                        __nv_bfloat16* __restrict__ b_out, float* __restrict__ inv_rms_out, int T, int H, float eps) {
    __shared__ float s_part[fg::NORM_THREADS / 32];
    __shared__ float s_r;
    const int t = blockIdx.x;
    if (t >= T || blockDim.x != fg::NORM_THREADS) return;
    const __nv_bfloat16* row = x + static_cast<size_t>(t) * H;
    float acc = 0.f;
    for (int k = threadIdx.x; k < H; k += fg::NORM_THREADS) {
        const float f = fg::bf2f(row[k]);
        acc = fmaf(f, f, acc);  // f*f is exact in fp32: same as multiply then add
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
    for (int k = threadIdx.x; k < H; k += fg::NORM_THREADS) {
        const __nv_bfloat16 a = __float2bfloat16_rn(__fmul_rn(fg::bf2f(row[k]), r));
        b_out[static_cast<size_t>(t) * H + k] = __float2bfloat16_rn(__fmul_rn(fg::bf2f(w[k]), fg::bf2f(a)));
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
