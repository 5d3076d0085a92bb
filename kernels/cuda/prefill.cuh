// The prefill kernels of fused_rmsnorm_qkv.cu (spliced into it by the Rust side, like tiles.cuh):
// tensor-core tiles whose GEMM operand stays resident in shared memory (ar_kernel).
//
// The tile kernels (tiles.cuh) bring raw x in with every k-tile and normalise it there, once per
// k-tile of every N-tile: at T = 128 that is 64 normalisations of each x element. Here a block
// takes one BT-token T-tile and a run of BN-row N-tiles: it copies the T-tile's raw rows (all of H)
// into shared memory once, computes their inv_rms from there, normalises them in place, and then
// streams only W through an S-stage cp.async ring, one barrier per k-tile. The k-order, the
// fragment map and the inv_rms order are the tile kernels' (fused_rmsnorm_qkv.cu's header), so a
// row's bits do not depend on which kernel ran it: exact stays batch-invariant.
//
// Launch rule (kernels/src/cuda/plan.rs `prefill_tile`): H % 8 == 0 and 16-byte aligned x, W and
// norm weight (traps otherwise); block = C::THREADS; dynamic shared memory = ar_smem<C>(H); grid =
// (gx, ceil(T / BT)) for any 1 <= gx <= ceil(N / BN), block x taking ceil(tiles_n / gx)
// consecutive N-tiles (as the tile kernels).
#pragma once

namespace fg {

template <int BT_, int BN_, int WT_, int WN_, int BK_, int S_>
struct ArCfg {
    static constexpr int BT = BT_, BN = BN_;  // block tile: tokens x W rows
    static constexpr int WT = WT_, WN = WN_;  // warp grid
    static constexpr int BK = BK_, S = S_;    // W k-tile width, ring stages
    static constexpr int THREADS = WT * WN * 32;
    static constexpr int WTT = BT / WT, WTN = BN / WN;  // warp tile
    static constexpr int MT = WTT / 16, NT = WTN / 8;   // MMA tiles per warp
    static constexpr int WSTAGE = BN * BK;              // bf16 elements per W stage
    static constexpr int RING = S * WSTAGE * 2;         // bytes
    static_assert(WTT % 16 == 0 && WTN % 8 == 0 && BK == 64, "tile shape");
};

// 64 x 64 tiles for mid-size T (twice the blocks of 64 x 128 at T = 128), 64 x 128 above.
typedef ArCfg<64, 64, 2, 4, 64, 4> ArP64;
typedef ArCfg<64, 128, 2, 4, 64, 4> ArP128;

// 16-byte units per resident row: H rounded up to 64 elements, so that the odd rows' 64-byte
// half swap (as tile_off's) stays within the row.
__device__ __forceinline__ int ar_upr(int H) { return (H + 63) / 64 * 8; }
template <class C>
__device__ __forceinline__ int ar_smem(int H) {
    return C::RING + C::BT * ar_upr(H) * 16;
}
// Offset (bf16 elements) of unit `unit` of resident row `row`: a quarter warp's fragment loads
// (rows g and g + 1, four units each) hit all 32 banks once.
__device__ __forceinline__ int ar_off(int row, int unit, int upr) {
    return (row * upr + (unit ^ ((row & 1) << 2))) * 8;
}

template <int NORM, int FAULT, class C>
__device__ __forceinline__ void ar_kernel(const Args a) {
    extern __shared__ uint4 fg_smem[];
    __shared__ float s_r[C::BT];
    const int upr = ar_upr(a.H);
    check_launch(C::THREADS, ar_smem<C>(a.H));
    if (!vec16_ok(a)) __trap();
    bf16* ring = reinterpret_cast<bf16*>(fg_smem);
    bf16* A = ring + C::S * C::WSTAGE;

    const int N = (a.Nq + 2 * a.Nkv) * a.D;
    const int tiles_n = (N + C::BN - 1) / C::BN;
    const int npb = (tiles_n + gridDim.x - 1) / gridDim.x;
    const int nt_begin = blockIdx.x * npb, nt_end = min(nt_begin + npb, tiles_n);
    if (nt_begin >= nt_end) return;
    const int t0 = blockIdx.y * C::BT, rows_live = min(C::BT, a.T - t0);
    const int KT = (a.H + C::BK - 1) / C::BK, iters = (nt_end - nt_begin) * KT;

    // The T-tile's raw rows, zeros past T and H: the oldest cp.async group.
    for (int i = threadIdx.x; i < C::BT * upr; i += C::THREADS) {
        const int row = i / upr, u = i - row * upr;
        const bool ok = row < rows_live && u * 8 < a.H;
        cp_async16(A + ar_off(row, u, upr), ok ? a.x + static_cast<size_t>(t0 + row) * a.H + u * 8 : a.x, ok);
    }
    cp_async_commit();
    int ld_j = 0, ld_nt = nt_begin, ld_kt = 0;
    auto issue = [&]() {  // W k-tile ld_j into its ring slot; an empty group past the end
        if (ld_j < iters)
            load_tile<C::BN, C::BK, C::THREADS>(ring + (ld_j % C::S) * C::WSTAGE, a.w_qkv, N, a.H, ld_nt * C::BN,
                                                ld_kt * C::BK, true);
        cp_async_commit();
        ++ld_j;
        if (++ld_kt == KT) ld_kt = 0, ++ld_nt;
    };
#pragma unroll
    for (int j = 0; j < C::S - 1; ++j) issue();
    cp_async_wait<C::S - 1>();  // the rows have landed (W may still be in flight)
    __syncthreads();

    // inv_rms per row, in block_inv_rms's order: lane l sums units l, l + 32, ... in increasing
    // k with fmaf, then the xor butterfly.
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int row = warp; row < C::BT; row += C::THREADS / 32) {
        float acc = 0.f;
        for (int u = lane; u * 8 < a.H; u += 32) {
            const uint4 v = lds16(A + ar_off(row, u, upr));
            const u32 w4[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float f0 = bf_lo(w4[j]), f1 = bf_hi(w4[j]);
                acc = fmaf(f0, f0, acc);
                acc = fmaf(f1, f1, acc);
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) s_r[row] = row < rows_live ? inv_rms_from_sum(acc, a.H, a.eps) : 0.f;
    }
    __syncthreads();

    // Normalise the live rows in place (zeros past T and H stay zero); the T-tile's first block
    // reports stage B and inv_rms.
    const bool report = blockIdx.x == 0;
    const bool b_vec = (reinterpret_cast<unsigned long long>(a.b_out) & 15) == 0;
    const int units = a.H / 8;
    for (int i = threadIdx.x; i < rows_live * units; i += C::THREADS) {
        const int row = i / units, u = i - row * units;
        bf16* p = A + ar_off(row, u, upr);
        const uint4 xv = lds16(p), wv = ldg16(a.w_norm + u * 8);
        const float r = s_r[row];
        const uint4 bv = make_uint4(norm_pair<NORM>(xv.x, wv.x, r), norm_pair<NORM>(xv.y, wv.y, r),
                                    norm_pair<NORM>(xv.z, wv.z, r), norm_pair<NORM>(xv.w, wv.w, r));
        sts16(p, bv);
        if (report && a.b_out != nullptr) store_b8<false>(a, t0 + row, u * 8, bv, b_vec);
    }
    if (report && a.inv_rms_out != nullptr)
        for (int i = threadIdx.x; i < rows_live; i += C::THREADS) a.inv_rms_out[t0 + i] = s_r[i];
    __syncthreads();

    const int g = lane >> 2, c = lane & 3;
    const int wt = warp / C::WN, wn = warp % C::WN;
    // acc: the current k-slice's chain; tot: the slices folded so far, in order.
    float acc[C::MT][C::NT][4], tot[C::MT][C::NT][4];
#pragma unroll
    for (int m = 0; m < C::MT; ++m)
#pragma unroll
        for (int n = 0; n < C::NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[m][n][e] = 0.f, tot[m][n][e] = 0.f;
    const int nch = (a.H + 31) / 32;
    int sc = 0, next_lo = ks_lo(1, nch);
    auto fold = [&]() {
#pragma unroll
        for (int m = 0; m < C::MT; ++m)
#pragma unroll
            for (int n = 0; n < C::NT; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) tot[m][n][e] = __fadd_rn(tot[m][n][e], acc[m][n][e]), acc[m][n][e] = 0.f;
    };

    int nt = nt_begin, kt = 0;
    for (int j = 0; j < iters; ++j) {
        cp_async_wait<C::S - 2>();
        __syncthreads();  // k-tile j landed for everyone; slot j-1 fully consumed
        issue();
        const bf16* W = ring + (j % C::S) * C::WSTAGE;
#pragma unroll
        for (int ch = 0; ch < C::BK / 32; ++ch) {
            const int gch = kt * (C::BK / 32) + ch;
            if (gch >= nch) break;  // all-zero chunk: skipped so the order depends on H only
            while (gch >= next_lo) {  // slice sc is complete (an empty slice folds +0)
                fold();
                next_lo = ks_lo(++sc + 1, nch);
            }
            uint4 bw[C::NT], ax[C::MT][2];
#pragma unroll
            for (int n = 0; n < C::NT; ++n) bw[n] = lds16(W + tile_off<C::BK>(wn * C::WTN + n * 8 + g, ch * 4 + c));
            const int unit = gch * 4 + c;
#pragma unroll
            for (int m = 0; m < C::MT; ++m) {
                const int r = wt * C::WTT + m * 16 + g;
                ax[m][0] = lds16(A + ar_off(r, unit, upr));
                ax[m][1] = lds16(A + ar_off(r + 8, unit, upr));
            }
#pragma unroll
            for (int m = 0; m < C::MT; ++m)
#pragma unroll
                for (int n = 0; n < C::NT; ++n)
                    mma16816(acc[m][n], ax[m][0].x, ax[m][1].x, ax[m][0].y, ax[m][1].y, bw[n].x, bw[n].y);
#pragma unroll
            for (int m = 0; m < C::MT; ++m)
#pragma unroll
                for (int n = 0; n < C::NT; ++n)
                    mma16816(acc[m][n], ax[m][0].z, ax[m][1].z, ax[m][0].w, ax[m][1].w, bw[n].z, bw[n].w);
        }

        if (kt == KT - 1) {  // this N-tile is complete: fold the last slices, store, restart from zero
            for (; sc < KSLICES; ++sc) fold();
            sc = 0;
            next_lo = ks_lo(1, nch);
            const int nbase = nt * C::BN + wn * C::WTN, tbase = t0 + wt * C::WTT;
#pragma unroll
            for (int m = 0; m < C::MT; ++m)
#pragma unroll
                for (int n = 0; n < C::NT; ++n) {
                    const int col = nbase + n * 8 + 2 * c;
                    const int t = tbase + m * 16 + g;
                    if (col < N) {
                        if (t < a.T) store_pair<FAULT>(a, t, col, tot[m][n][0], tot[m][n][1]);
                        if (t + 8 < a.T) store_pair<FAULT>(a, t + 8, col, tot[m][n][2], tot[m][n][3]);
                    }
#pragma unroll
                    for (int e = 0; e < 4; ++e) tot[m][n][e] = 0.f;
                }
        }
        if (++kt == KT) kt = 0, ++nt;
    }
    cp_async_wait<0>();
}

}  // namespace fg
