// The rest of HF's Qwen3 decoder layer, around an entry's fused RMSNorm + QKV, for the model
// gate's device forward pass (model/src/forward/device.rs). Each op rounds where HF's eager path
// rounds (NUMERICS.md, "The whole Qwen3 decoder layer"), the same points as the CPU reference ops
// (model/src/forward/{ops,rope,attention}.rs); only fp32 summation orders differ. The GEMMs
// (o_proj, gate, up, down, lm_head) are cuBLAS, as in PyTorch; the layer norms reuse rmsnorm.cu.
//
// Launch rules (kernels/src/cuda/decoder.rs encodes them):
//   fusegate_embed:         grid = T, block = 256.
//   fusegate_qk_norm_rope:  grid = (T, Nq + 2 Nkv), block = D (even, <= 1024), no dynamic smem.
//   fusegate_attention:     grid = (Nq, T), block = 1024 (few rows) or 128 (W = block / 32 warps),
//                           dynamic smem = ((1 + W) D + first_pos + T) floats.
//   fusegate_silu_mul, fusegate_add: grid = ceil(n / 256), block = 256.
#include "common.cuh"

namespace fg {
__device__ __forceinline__ float round_bf16(float v) { return bf2f(__float2bfloat16_rn(v)); }

// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024), in a fixed order: warp
// butterflies, then the warp sums in warp order by thread 0. Every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* s_part, float* s_out) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) s_part[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0.f;
        for (int i = 0; i < static_cast<int>(blockDim.x >> 5); ++i) sum += s_part[i];
        *s_out = sum;
    }
    __syncthreads();
    return *s_out;
}

__device__ __forceinline__ float block_max(float v, float* s_part, float* s_out) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if ((threadIdx.x & 31) == 0) s_part[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float m = -__int_as_float(0x7f800000);  // -inf (NVRTC has no INFINITY)
        for (int i = 0; i < static_cast<int>(blockDim.x >> 5); ++i) m = fmaxf(m, s_part[i]);
        *s_out = m;
    }
    __syncthreads();
    return *s_out;
}
}  // namespace fg

// out[t, :] = embed[ids[t], :] (ids checked against the vocabulary on the host).
extern "C" __global__ void fusegate_embed(const int* __restrict__ ids, const __nv_bfloat16* __restrict__ embed,
                                          __nv_bfloat16* __restrict__ out, int T, int H) {
    const int t = blockIdx.x;
    if (t >= T) return;
    const __nv_bfloat16* row = embed + static_cast<size_t>(ids[t]) * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) out[static_cast<size_t>(t) * H + i] = row[i];
}

// Per head row of q and k: HF RMSNorm over D (q_norm / k_norm: A = bf16(x * r), bf16(w * A)), then
// RoPE as HF applies it, bf16(bf16(x * cos) + bf16(rotate_half(x) * sin)), with cos and sin the
// bf16 tables at the row's position. q goes to q_out [T, Nq, D]; k and v go to the KV cache
// [positions, Nkv, D] at position first_pos + t (v unchanged). q, k and v rows start ldq, ldk,
// ldv elements apart (their own widths, or N where they are column ranges of one [T, N] GEMM
// output). One block per (token, head row), one thread per element.
extern "C" __global__ void fusegate_qk_norm_rope(
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
    const __nv_bfloat16* __restrict__ q_norm, const __nv_bfloat16* __restrict__ k_norm,
    const __nv_bfloat16* __restrict__ cos_tab, const __nv_bfloat16* __restrict__ sin_tab,
    __nv_bfloat16* __restrict__ q_out, __nv_bfloat16* __restrict__ k_cache, __nv_bfloat16* __restrict__ v_cache,
    int T, int Nq, int Nkv, int D, int first_pos, int ldq, int ldk, int ldv, float eps) {
    __shared__ float s_part[32];
    __shared__ float s_sum;
    __shared__ float s_row[1024];
    const int t = blockIdx.x, h = blockIdx.y, i = threadIdx.x;
    if (t >= T || i >= D) return;
    const size_t pos = static_cast<size_t>(first_pos) + t;
    if (h >= Nq + Nkv) {
        const int hv = h - Nq - Nkv;
        v_cache[(pos * Nkv + hv) * D + i] = v[static_cast<size_t>(t) * ldv + hv * D + i];
        return;
    }
    const bool is_q = h < Nq;
    const int hk = h - Nq;
    const __nv_bfloat16* row = is_q ? q + static_cast<size_t>(t) * ldq + h * D : k + static_cast<size_t>(t) * ldk + hk * D;
    const float x = fg::bf2f(row[i]);
    // x*x is exact in fp32 (a bf16 square), so the sum's only roundings are the additions.
    const float sum = fg::block_sum(__fmul_rn(x, x), s_part, &s_sum);
    const float r = fg::inv_rms_from_sum(sum, D, eps);
    const float a = fg::round_bf16(__fmul_rn(x, r));
    const float n = fg::round_bf16(__fmul_rn(fg::bf2f((is_q ? q_norm : k_norm)[i]), a));
    s_row[i] = n;
    __syncthreads();
    const int half = D / 2;
    const float rot = i < half ? -s_row[i + half] : s_row[i - half];
    const float c = fg::bf2f(cos_tab[pos * D + i]), s = fg::bf2f(sin_tab[pos * D + i]);
    const float out = __fadd_rn(fg::round_bf16(__fmul_rn(n, c)), fg::round_bf16(__fmul_rn(rot, s)));
    if (is_q) q_out[(static_cast<size_t>(t) * Nq + h) * D + i] = __float2bfloat16_rn(out);
    else k_cache[(pos * Nkv + hk) * D + i] = __float2bfloat16_rn(out);
}

// HF's eager attention for query row (head h, token t) at position first_pos + t, over the cache's
// positions 0..=first_pos + t (the causal mask: masked scores are exactly 0 after the softmax, so
// they are left out): scores bf16(q . k) (fp32 accumulation), times the scaling in bf16, softmax in
// fp32 rounded to bf16, then bf16(sum p * v). Query head h reads key/value head h / (Nq / Nkv).
// The block's W warps share the keys (warp w takes keys w, w + W, ...) for the scores and for p * v;
// the warps' partial sums of p * v are added in warp order, so the result does not depend on timing.
extern "C" __global__ void __launch_bounds__(1024)
    fusegate_attention(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k_cache,
                       const __nv_bfloat16* __restrict__ v_cache, __nv_bfloat16* __restrict__ out, int T, int Nq,
                       int Nkv, int D, int first_pos, float scaling) {
    constexpr int MAX_PER_LANE = 8;  // D <= 256
    extern __shared__ float s_dyn[];
    __shared__ float s_part[32];
    __shared__ float s_red;
    const int warps = blockDim.x >> 5;
    float* s_q = s_dyn;                 // [D]
    float* s_acc = s_dyn + D;           // [warps, D]: each warp's partial p * v
    float* s_p = s_dyn + D + warps * D; // [visible]
    const int h = blockIdx.x, t = blockIdx.y;
    if (h >= Nq || t >= T) return;
    const int kvh = h / (Nq / Nkv);
    const int visible = first_pos + t + 1;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int i = threadIdx.x; i < D; i += blockDim.x) s_q[i] = fg::bf2f(q[(static_cast<size_t>(t) * Nq + h) * D + i]);
    __syncthreads();
    for (int s = warp; s < visible; s += warps) {
        const __nv_bfloat16* kr = k_cache + (static_cast<size_t>(s) * Nkv + kvh) * D;
        float acc = 0.f;
        for (int j = lane; j < D; j += 32) acc = fmaf(s_q[j], fg::bf2f(kr[j]), acc);  // exact products
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) s_p[s] = fg::round_bf16(__fmul_rn(fg::round_bf16(acc), scaling));
    }
    __syncthreads();
    float m = -__int_as_float(0x7f800000);  // -inf (NVRTC has no INFINITY)
    for (int s = threadIdx.x; s < visible; s += blockDim.x) m = fmaxf(m, s_p[s]);
    m = fg::block_max(m, s_part, &s_red);
    float part = 0.f;
    for (int s = threadIdx.x; s < visible; s += blockDim.x) {
        const float e = expf(__fsub_rn(s_p[s], m));
        s_p[s] = e;
        part = __fadd_rn(part, e);
    }
    const float total = fg::block_sum(part, s_part, &s_red);
    for (int s = threadIdx.x; s < visible; s += blockDim.x) s_p[s] = fg::round_bf16(__fdiv_rn(s_p[s], total));
    __syncthreads();
    float acc[MAX_PER_LANE];
#pragma unroll
    for (int i = 0; i < MAX_PER_LANE; ++i) acc[i] = 0.f;
    for (int s = warp; s < visible; s += warps) {
        const float p = s_p[s];
        const __nv_bfloat16* vr = v_cache + (static_cast<size_t>(s) * Nkv + kvh) * D;
#pragma unroll
        for (int i = 0; i < MAX_PER_LANE; ++i)
            if (lane + 32 * i < D) acc[i] = fmaf(p, fg::bf2f(vr[lane + 32 * i]), acc[i]);  // exact products
    }
#pragma unroll
    for (int i = 0; i < MAX_PER_LANE; ++i)
        if (lane + 32 * i < D) s_acc[warp * D + lane + 32 * i] = acc[i];
    __syncthreads();
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float sum = 0.f;
        for (int w = 0; w < warps; ++w) sum = __fadd_rn(sum, s_acc[w * D + j]);
        out[(static_cast<size_t>(t) * Nq + h) * D + j] = __float2bfloat16_rn(sum);
    }
}

// bf16(bf16(silu(gate)) * up): HF's act_fn(gate_proj(x)) * up_proj(x), silu computed in fp32.
extern "C" __global__ void fusegate_silu_mul(const __nv_bfloat16* __restrict__ gate, const __nv_bfloat16* __restrict__ up,
                                             __nv_bfloat16* __restrict__ out, long long n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = fg::bf2f(gate[i]);
    const float act = fg::round_bf16(__fdiv_rn(g, __fadd_rn(1.f, expf(-g))));
    out[i] = __float2bfloat16_rn(__fmul_rn(act, fg::bf2f(up[i])));
}

// bf16(a + b): the residual adds. `out` may alias neither input.
extern "C" __global__ void fusegate_add(const __nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ b,
                                       __nv_bfloat16* __restrict__ out, long long n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = __float2bfloat16_rn(__fadd_rn(fg::bf2f(a[i]), fg::bf2f(b[i])));
}
