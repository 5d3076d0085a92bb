// Fused RMSNorm + QKV projection: out[T, N] = norm(x)[T, H] @ W[N, H]^T, columns split into
// q | k | v. Every registry entry with CudaImpl::Fused is one wrapper line at the bottom.
//
// Two kernel families, both templated over the numerics (Norm, Fault) and a tile config:
//
//  * mma_kernel (HF, round-once, skip-weight numerics): bf16 tensor cores (mma.sync m16n8k16,
//    fp32 accumulate). Tokens are the MMA's M side, rows of W its N side, H its K side.
//  * f32_kernel (fp32 throughout): FFMA on CUDA cores, operand (x*r)*w never rounded.
//
// One block computes a BT-token x BN-row tile of out, looping over H in BK-wide k-tiles that an
// S-stage cp.async ring brings in (raw x and raw W). Each k-tile's raw x is normalised in shared
// memory (A then B for HF) right before the MMAs: the GEMM operand never touches device memory.
// inv_rms of the block's BT rows is computed first, while the first S-1 stages are in flight.
//
// Reduction order (why exact is batch-invariant): the nch = ceil(H/32) 32-wide k-chunks are cut
// into KSLICES = 4 contiguous k-slices (slice s = chunks ks_lo(s) .. ks_lo(s+1)-1, ks_lo(s) =
// s * nch / 4). Each slice is one MMA chain from zero: "for each chunk of the slice in increasing
// k: mma step 0, mma step 1". An output element is then (((0 + slice0) + slice1) + slice2) +
// slice3, fp32 adds rounded to nearest. Chunks entirely past H are skipped (an empty slice adds
// +0), so the sequence depends on H alone: every tile config, the decode kernels (one warp per
// slice, added in that order through shared memory) and so every T give the same bits for a row.
// No atomics anywhere: every order is fixed, so every kernel is deterministic.
// Within a chunk, lane c of a quad holds physical k = 8c..8c+7 of the chunk (one 16-byte load);
// its pairs 0,1 play the MMA's logical k {2c,2c+1} and {2c+8,2c+9} of step 0, pairs 2,3 those of
// step 1. A and B operands use the same map, so the product is the true dot product.
// f32_kernel accumulates each output with one FFMA chain in increasing k, also T-independent.
// (Before v6 of NOTES.md the order was one chain over all of H; the k-slices let the decode
// kernels split K over 4 warps, a chain of 16 MMAs instead of 64 at H = 1024.)
//
// Launch rule of the tile kernels (kernels/src/cuda/plan.rs `route` encodes it, with `pick_tile`
// and `grid_for`): block = CFG::THREADS threads, dynamic shared memory = CFG::SMEM bytes, grid =
// (gx, ceil(T / CFG::BT)) for any 1 <= gx <= ceil(N / CFG::BN); block x takes ceil(tiles_n / gx)
// consecutive BN-row tiles (a persistent loop that shares the inv_rms prologue). The unsuffixed
// name (e.g. fusegate_mixed) is the t64 config and works for any T and H; __t16 / __t32 / __t64
// / __t128 name the specialisations the Rust side picks by T. The decode kernels (__dec16,
// __dec32, few tokens, H % 8 == 0) have their own rule, beside them in decode.cuh (`decode_plan`).
// The two families live in tiles.cuh and decode.cuh, spliced in like common.cuh.
#include "common.cuh"

namespace fg {

// Guards the launch rule: a mismatch between cuda.rs and a config traps (a launch error), never
// silently computes on a wrong layout.
__device__ __forceinline__ void check_launch(int threads, int smem) {
    u32 dyn;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
    if (blockDim.x != static_cast<unsigned>(threads) || blockDim.y != 1 || dyn < static_cast<u32>(smem)) __trap();
}

// exact's k-slices (header comment): slice s of the nch k-chunks starts at chunk ks_lo(s, nch).
constexpr int KSLICES = 4;
__device__ __forceinline__ int ks_lo(int s, int nch) { return s * nch / KSLICES; }

}  // namespace fg

#include "tiles.cuh"
#include "decode.cuh"

// ------------------------------------------------------------------------------------------------
// The registry's kernels. One line per variant or mutant; each expands to the generic entry
// point (t64 config) plus the per-T specialisations (tile configs __t*, decode kernels __dec*).

#define FG_KERNEL(NAME, BODY, CFG)                                                                 \
    extern "C" __global__ void __launch_bounds__(CFG::THREADS) NAME(FG_PARAMS) { BODY<CFG>(FG_ARGS); }

#define FG_MMA_VARIANT(NAME, NORM, FAULT, CHAINS)                                                  \
    template <class C>                                                                             \
    __device__ __forceinline__ void NAME##_body(const fg::Args a) {                                \
        fg::mma_kernel<NORM, FAULT, C>(a);                                                         \
    }                                                                                              \
    FG_KERNEL(NAME, NAME##_body, fg::MmaT64)                                                       \
    FG_KERNEL(NAME##__t16, NAME##_body, fg::MmaT16)                                                \
    FG_KERNEL(NAME##__t32, NAME##_body, fg::MmaT32)                                                \
    FG_KERNEL(NAME##__t64, NAME##_body, fg::MmaT64)                                                \
    FG_KERNEL(NAME##__t128, NAME##_body, fg::MmaT128)                                              \
    FG_DV_KERNEL(NAME##__dec16, NORM, FAULT, 1, CHAINS, true, 2)                                   \
    FG_DV_KERNEL(NAME##__dec32, NORM, FAULT, 2, CHAINS, true, 1)                                   \
    FG_DV_KERNEL(NAME##__dec16r, NORM, FAULT, 1, CHAINS, false, 1)                                 \
    FG_DV_KERNEL(NAME##__dec32r, NORM, FAULT, 2, CHAINS, false, 1)

// MINB: blocks per SM the registers must allow (2: one of the next grid beside a running one).
#define FG_DV_KERNEL(NAME, NORM, FAULT, MT, CHAINS, WSMEM, MINB)                                   \
    extern "C" __global__ void __launch_bounds__(fg::DV_THREADS, MINB) NAME(FG_PARAMS) {           \
        fg::dv_kernel<NORM, FAULT, MT, CHAINS, WSMEM>(FG_ARGS);                                    \
    }

#define FG_F32_VARIANT(NAME, FAULT)                                                                \
    template <class C>                                                                             \
    __device__ __forceinline__ void NAME##_body(const fg::Args a) {                                \
        fg::f32_kernel<FAULT, C>(a);                                                               \
    }                                                                                              \
    FG_KERNEL(NAME, NAME##_body, fg::F32T64)                                                       \
    FG_KERNEL(NAME##__t8, NAME##_body, fg::F32T8)                                                  \
    FG_KERNEL(NAME##__t32, NAME##_body, fg::F32T32)                                                \
    FG_KERNEL(NAME##__t64, NAME##_body, fg::F32T64)                                                \
    FG_KERNEL(NAME##__t128, NAME##_body, fg::F32T128)                                              \
    extern "C" __global__ void __launch_bounds__(fg::DEC_THREADS) NAME##__dec16(FG_PARAMS) {         \
        fg::dec_f32_kernel<FAULT>(FG_ARGS);                                                        \
    }

FG_F32_VARIANT(fusegate_f32, fg::FAULT_NONE)
// (name, norm rounding, fault, decode MMA chains per k-slice: 1 = exact's order, 2 = mixed's own)
FG_MMA_VARIANT(fusegate_mixed, fg::NORM_HF, fg::FAULT_NONE, 2)
FG_MMA_VARIANT(fusegate_exact, fg::NORM_HF, fg::FAULT_NONE, 1)
FG_MMA_VARIANT(mutant_round_once, fg::NORM_ONCE, fg::FAULT_NONE, 2)
FG_MMA_VARIANT(mutant_skip_weight, fg::NORM_SKIPW, fg::FAULT_NONE, 2)
FG_MMA_VARIANT(mutant_unwritten, fg::NORM_HF, fg::FAULT_UNWRITTEN, 2)
FG_MMA_VARIANT(mutant_early_x, fg::NORM_HF, fg::FAULT_EARLY_X, 1)
