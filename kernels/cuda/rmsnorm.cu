// The standard (unfused) path's norm: HF Qwen3RMSNorm as its own kernel, writing B [T, H] bf16
// and inv_rms [T] f32 for the one cuBLAS GEMM that follows (its [T, N] output holds q | k | v in
// each row; nothing copies them apart).
//
// Launch rule (prepared.rs `launch_standard` encodes it):
//   fusegate_hf_rmsnorm: grid = T blocks (one row each), block = plan.rs `norm_threads(H)` (a
//                        multiple of 32, at most 256: one 16-byte chunk per thread where H allows),
//                        no dynamic smem.
#include "common.cuh"

namespace fg {
constexpr int NORM_THREADS = 256;
}

// One row per block of B threads (B from H alone). Sum of squares: thread i takes the elements of
// 16-byte chunks i, i+B, ... (8 elements each, in increasing k; single elements i, i+B, ... where
// H % 8 != 0 or a pointer is not 16-byte aligned), then warp xor butterflies and the B/32 warp
// sums in warp order: deterministic and independent of T.
// A = bf16(x * r), B = bf16(w * A), r = rsqrtf(sum * (1/H) + eps): HF's rounding points.
extern "C" __global__ void __launch_bounds__(fg::NORM_THREADS)
    fusegate_hf_rmsnorm(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                        __nv_bfloat16* __restrict__ b_out, float* __restrict__ inv_rms_out, int T, int H, float eps) {
    __shared__ float s_part[fg::NORM_THREADS / 32];
    __shared__ float s_r;
    const int t = blockIdx.x;
    const int nt = blockDim.x;
    if (t >= T || nt % 32 != 0 || nt > fg::NORM_THREADS) return;
    const __nv_bfloat16* row = x + static_cast<size_t>(t) * H;
    __nv_bfloat16* out = b_out + static_cast<size_t>(t) * H;
    typedef unsigned long long addr;
    const bool vec = H % 8 == 0 &&
                     ((reinterpret_cast<addr>(x) | reinterpret_cast<addr>(w) | reinterpret_cast<addr>(b_out)) & 15) == 0;
    float acc = 0.f;
    if (vec) {
        for (int c = threadIdx.x; c < H / 8; c += nt) {
            const uint4 v = fg::ldg16(row + 8 * c);
            const fg::u32 ps[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                acc = fmaf(fg::bf_lo(ps[j]), fg::bf_lo(ps[j]), acc);  // squares are exact in fp32
                acc = fmaf(fg::bf_hi(ps[j]), fg::bf_hi(ps[j]), acc);
            }
        }
    } else {
        for (int k = threadIdx.x; k < H; k += nt) {
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
        for (int i = 0; i < nt / 32; ++i) sum += s_part[i];
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
        for (int c = threadIdx.x; c < H / 8; c += nt) {
            const uint4 xv = fg::ldg16(row + 8 * c), wv = fg::ldg16(w + 8 * c);
            const fg::u32 xs[4] = {xv.x, xv.y, xv.z, xv.w}, ws[4] = {wv.x, wv.y, wv.z, wv.w};
            fg::u32 bs[4];
#pragma unroll
            for (int j = 0; j < 4; ++j)
                bs[j] = fg::pack_rn(b_of(fg::bf_lo(xs[j]), fg::bf_lo(ws[j])), b_of(fg::bf_hi(xs[j]), fg::bf_hi(ws[j])));
            *reinterpret_cast<uint4*>(out + 8 * c) = make_uint4(bs[0], bs[1], bs[2], bs[3]);
        }
    } else {
        for (int k = threadIdx.x; k < H; k += nt)
            out[k] = __float2bfloat16_rn(b_of(fg::bf2f(row[k]), fg::bf2f(w[k])));
    }
}
