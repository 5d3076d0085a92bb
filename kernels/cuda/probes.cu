// Kernels that test the launch machinery, not the op.
//
// fusegate_late_writer: the predecessor a chained (PDL) launch must wait for. It lets the next
// grid start at once, spins for `spin` clock cycles, and only then copies n16 16-byte units from
// src to dst (the next kernel's x). A chained kernel that reads x before its griddepcontrol.wait
// sees the old x. Launch rule: any grid, any block size.
#include "common.cuh"

extern "C" __global__ void fusegate_late_writer(uint4* dst, const uint4* src, int n16, long long spin) {
    fg::griddep_launch_dependents();
    const long long t0 = clock64();
    while (clock64() - t0 < spin) {
    }
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += gridDim.x * blockDim.x) dst[i] = src[i];
}

// fusegate_mma_rate: the tensor cores' bf16 rate through mma.sync m16n8k16, the instruction every
// fusegate tensor-core kernel is built on (sm_90's wgmma, which cuBLAS uses, is a different path).
// Each warp loads one A and one B fragment from `frags` (lane l: frags[l] and frags[32 + l]), runs
// `rounds` rounds of MMA_RATE_CHAINS independent accumulator chains, and writes the sum of its
// lane's accumulators to out[global thread]: every warp computes the same values, which the host
// checks, so the work can be neither skipped nor folded away. Launch rule: any grid, whole warps.
constexpr int MMA_RATE_CHAINS = 8;

extern "C" __global__ void fusegate_mma_rate(const uint4* frags, float* out, int rounds) {
    const int lane = threadIdx.x & 31;
    const uint4 a = frags[lane], b = frags[32 + lane];
    float acc[MMA_RATE_CHAINS][4];
#pragma unroll
    for (int c = 0; c < MMA_RATE_CHAINS; ++c) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.f;
    for (int i = 0; i < rounds; ++i) {
#pragma unroll
        for (int c = 0; c < MMA_RATE_CHAINS; ++c) fg::mma16816(acc[c], a.x, a.y, a.z, a.w, b.x, b.y);
    }
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < MMA_RATE_CHAINS; ++c) s += (acc[c][0] + acc[c][1]) + (acc[c][2] + acc[c][3]);
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
