// The tile kernels of fused_rmsnorm_qkv.cu (spliced into it by the Rust side, like common.cuh):
// tensor-core (mma_kernel) and fp32 (f32_kernel) families, each over a tile config.
#pragma once

namespace fg {

// ------------------------------------------------------------------------------------------------
// Tensor-core family.

template <int BT_, int BN_, int WT_, int WN_, int BK_, int S_>
struct MmaCfg {
    static constexpr int BT = BT_, BN = BN_;  // block tile: tokens x W rows
    static constexpr int WT = WT_, WN = WN_;  // warp grid
    static constexpr int BK = BK_, S = S_;    // k-tile width, pipeline stages
    static constexpr int THREADS = WT * WN * 32;
    static constexpr int WTT = BT / WT, WTN = BN / WN;  // warp tile
    static constexpr int MT = WTT / 16, NT = WTN / 8;   // MMA tiles per warp
    static constexpr int STAGE = (BT + BN + 1) * BK;    // bf16 elements per stage: x, W, norm weight
    static constexpr int SMEM = S * STAGE * 2;          // dynamic shared memory, bytes
    static_assert(WTT % 16 == 0 && WTN % 8 == 0 && BK % 32 == 0 && BK / 8 >= 8, "tile shape");
};

// Decode: 16 / 32 tokens x 16 W rows (two warps, one n8 tile each): N / 16 = 256 blocks, about
// two per SM, each with 5-6 k-tiles of W in flight, so every SM streams W with ~40 KB
// outstanding. Prefill: 64x64 and 128x128 tiles with 8 warps.
typedef MmaCfg<16, 16, 1, 2, 128, 6> MmaT16;
typedef MmaCfg<32, 16, 1, 2, 128, 5> MmaT32;
typedef MmaCfg<64, 64, 2, 4, 64, 4> MmaT64;
typedef MmaCfg<128, 128, 2, 4, 64, 4> MmaT128;

// Stage B's 8 values at (t, k) into the debug output: one 16-byte store when b_out is 16-byte
// aligned (b_vec), else element by element; TAIL: only those below H (the decode kernels need
// H % 8 == 0, so all 8 are).
template <bool TAIL>
__device__ __forceinline__ void store_b8(const Args& a, int t, int k, uint4 bv, bool b_vec) {
    bf16* dst = a.b_out + static_cast<size_t>(t) * a.H + k;
    if (b_vec) {
        sts16(dst, bv);  // generic store; dst is global
        return;
    }
    const u32 w4[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
    for (int j = 0; j < 8; ++j)
        if (!TAIL || k + j < a.H) dst[j] = __ushort_as_bfloat16(static_cast<unsigned short>(w4[j / 2] >> (16 * (j % 2))));
}

// Normalises the block's raw x k-tile in place (GEMM operand B, bf16), and copies it to b_out
// when this block is the one that reports stage B.
template <int NORM, class C>
__device__ __forceinline__ void mma_convert(const Args& a, bf16* X, const bf16* WN, int t0, int k0, const float* s_r,
                                            bool vec, bool write_b) {
    constexpr int UPR = C::BK / 8, UNITS = C::BT * UPR;
    const int rows_live = min(C::BT, a.T - t0);
    const bool b_vec = vec && (reinterpret_cast<unsigned long long>(a.b_out) & 15) == 0;
#pragma unroll
    for (int i = 0; i < (UNITS + C::THREADS - 1) / C::THREADS; ++i) {
        const int unit = threadIdx.x + i * C::THREADS;
        if (UNITS % C::THREADS != 0 && unit >= UNITS) break;
        const int row = unit / UPR, u = unit % UPR;
        const int k = k0 + u * 8;
        if (row >= rows_live || k >= a.H) continue;  // zero-filled slots stay zero
        bf16* p = X + tile_off<C::BK>(row, u);
        const uint4 xv = lds16(p);
        const uint4 wv = lds16(WN + u * 8);
        const float r = s_r[row];
        const uint4 bv = make_uint4(norm_pair<NORM>(xv.x, wv.x, r), norm_pair<NORM>(xv.y, wv.y, r),
                                    norm_pair<NORM>(xv.z, wv.z, r), norm_pair<NORM>(xv.w, wv.w, r));
        sts16(p, bv);
        if (write_b && a.b_out != nullptr) store_b8<true>(a, t0 + row, k, bv, b_vec);
    }
}

// The tile kernels' schedule and loader (both families): block x takes N-tiles [nt_begin, nt_end)
// of T-tile blockIdx.y (the launch rule above) and walks (N-tile, k-tile) with plain counters;
// issue() brings the next stage (x tile [BT][BK], W tile [BN][BK], norm weight [BK]) into the
// S-stage cp.async ring, S-1 stages ahead of the consumer, which walks in the same order.
template <class C>
struct TileRing {
    bool vec;
    int N, nt_begin, nt_end, t0, KT, iters;
    int ld_j = 0, ld_nt = 0, ld_kt = 0;

    __device__ __forceinline__ explicit TileRing(const Args& a) {
        vec = vec16_ok(a);
        N = (a.Nq + 2 * a.Nkv) * a.D;
        const int tiles_n = (N + C::BN - 1) / C::BN;
        const int npb = (tiles_n + gridDim.x - 1) / gridDim.x;
        nt_begin = blockIdx.x * npb, nt_end = min(nt_begin + npb, tiles_n);
        t0 = blockIdx.y * C::BT;
        KT = (a.H + C::BK - 1) / C::BK;
        iters = (nt_end - nt_begin) * KT;
        ld_nt = nt_begin;
    }
    // No N-tile for this block (the grid's last blocks when tiles do not divide evenly).
    __device__ __forceinline__ bool idle() const { return nt_begin >= nt_end; }
    __device__ __forceinline__ void issue(const Args& a, bf16* ring) {
        if (ld_j < iters) {
            bf16* st = ring + (ld_j % C::S) * C::STAGE;
            load_tile<C::BT, C::BK, C::THREADS>(st, a.x, a.T, a.H, t0, ld_kt * C::BK, vec);
            load_tile<C::BN, C::BK, C::THREADS>(st + C::BT * C::BK, a.w_qkv, N, a.H, ld_nt * C::BN, ld_kt * C::BK, vec);
            load_wnorm<C::BK>(st + (C::BT + C::BN) * C::BK, a, ld_kt * C::BK, vec);
        }
        cp_async_commit();  // possibly empty: keeps the group count arithmetic uniform
        ++ld_j;
        if (++ld_kt == KT) ld_kt = 0, ++ld_nt;
    }
};

template <int NORM, int FAULT, class C>
__device__ __forceinline__ void mma_kernel(const Args a) {
    extern __shared__ uint4 fg_smem[];
    __shared__ float s_r[C::BT];
    check_launch(C::THREADS, C::SMEM);
    bf16* smem = reinterpret_cast<bf16*>(fg_smem);

    TileRing<C> ring(a);
    if (ring.idle()) return;
    const bool vec = ring.vec;
    const int N = ring.N, nt_begin = ring.nt_begin, t0 = ring.t0, KT = ring.KT, iters = ring.iters;
    auto issue = [&]() { ring.issue(a, smem); };
#pragma unroll
    for (int j = 0; j < C::S - 1; ++j) issue();

    block_inv_rms<C::BT, C::THREADS / 32>(a, t0, vec, s_r);
    __syncthreads();
    const bool report = blockIdx.x == 0;  // the one block per T-tile that writes b_out / inv_rms_out
    if (report && a.inv_rms_out != nullptr)
        for (int i = threadIdx.x; i < C::BT; i += C::THREADS)
            if (t0 + i < a.T) a.inv_rms_out[t0 + i] = s_r[i];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const int wt = warp / C::WN, wn = warp % C::WN;
    // acc: the current k-slice's chain; tot: the slices folded so far, in order (header comment).
    float acc[C::MT][C::NT][4], tot[C::MT][C::NT][4];
#pragma unroll
    for (int m = 0; m < C::MT; ++m)
#pragma unroll
        for (int n = 0; n < C::NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[m][n][e] = 0.f, tot[m][n][e] = 0.f;
    const int nch = (a.H + 31) / 32;
    int sc = 0, next_lo = ks_lo(1, nch);  // the slice acc holds, and where the next one starts
    auto fold = [&]() {
#pragma unroll
        for (int m = 0; m < C::MT; ++m)
#pragma unroll
            for (int n = 0; n < C::NT; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) tot[m][n][e] = __fadd_rn(tot[m][n][e], acc[m][n][e]), acc[m][n][e] = 0.f;
    };

    int j = 0, nt = nt_begin, kt = 0;
    for (; j < iters; ++j) {
        cp_async_wait<C::S - 2>();
        __syncthreads();  // stage j landed for everyone; stage j-1 fully consumed
        issue();
        bf16* X = smem + (j % C::S) * C::STAGE;
        const bf16* W = X + C::BT * C::BK;
        mma_convert<NORM, C>(a, X, W + C::BN * C::BK, t0, kt * C::BK, s_r, vec, report && nt == nt_begin);
        __syncthreads();

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
#pragma unroll
            for (int m = 0; m < C::MT; ++m) {
                const int r = wt * C::WTT + m * 16 + g;
                ax[m][0] = lds16(X + tile_off<C::BK>(r, ch * 4 + c));
                ax[m][1] = lds16(X + tile_off<C::BK>(r + 8, ch * 4 + c));
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

// ------------------------------------------------------------------------------------------------
// fp32 family (CUDA cores).

template <int BT_, int BN_, int TM_, int TN_, int BK_, int S_>
struct F32Cfg {
    static constexpr int BT = BT_, BN = BN_, TM = TM_, TN = TN_, BK = BK_, S = S_;
    static constexpr int TMH = TM / 2, TNH = TN / 2;  // a thread owns two row groups and two column groups
    static constexpr int TX = BN / TN, TY = BT / TM;
    static constexpr int THREADS = TX * TY;
    static constexpr int PAD = 4;
    static constexpr int STAGE = (BT + BN + 1) * BK;  // x, W, norm weight
    static constexpr int RAW = S * STAGE * 2;
    static constexpr int OPB = BK * (BT + PAD) * 4, WFB = BK * (BN + PAD) * 4;
    static constexpr int SMEM = RAW + OPB + WFB;
    static_assert(TM % 2 == 0 && TN % 2 == 0 && BK % 8 == 0, "tile shape");
};

typedef F32Cfg<8, 32, 2, 2, 64, 6> F32T8;
typedef F32Cfg<32, 32, 4, 2, 64, 4> F32T32;
typedef F32Cfg<64, 64, 4, 4, 32, 4> F32T64;
typedef F32Cfg<128, 128, 8, 8, 32, 3> F32T128;

template <int N>
__device__ __forceinline__ void lds_f(float* d, const float* p) {
    if constexpr (N == 4) {
        const float4 v = *reinterpret_cast<const float4*>(p);
        d[0] = v.x, d[1] = v.y, d[2] = v.z, d[3] = v.w;
    } else if constexpr (N == 2) {
        const float2 v = *reinterpret_cast<const float2*>(p);
        d[0] = v.x, d[1] = v.y;
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) d[i] = p[i];
    }
}

template <int FAULT>
__device__ __forceinline__ void store_one(const Args& a, int t, int n, float val) {
    const OutPtr o = out_ptr(a, t, n);
    if (FAULT == FAULT_UNWRITTEN && o.is_q && o.idx == a.T * a.Nq * a.D / 2) return;
    o.p[o.idx] = __float2bfloat16_rn(val);
}

template <int FAULT, class C>
__device__ __forceinline__ void f32_kernel(const Args a) {
    extern __shared__ uint4 fg_smem[];
    __shared__ float s_r[C::BT];
    check_launch(C::THREADS, C::SMEM);
    bf16* raw = reinterpret_cast<bf16*>(fg_smem);
    float* op = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(fg_smem) + C::RAW);  // [BK][BT+PAD]
    float* wf = op + C::BK * (C::BT + C::PAD);                                                  // [BK][BN+PAD]

    TileRing<C> ring(a);
    if (ring.idle()) return;
    const bool vec = ring.vec;
    const int N = ring.N, nt_begin = ring.nt_begin, t0 = ring.t0, KT = ring.KT, iters = ring.iters;
    auto issue = [&]() { ring.issue(a, raw); };
#pragma unroll
    for (int j = 0; j < C::S - 1; ++j) issue();

    block_inv_rms<C::BT, (C::THREADS + 31) / 32>(a, t0, vec, s_r);
    __syncthreads();
    if (blockIdx.x == 0 && a.inv_rms_out != nullptr)
        for (int i = threadIdx.x; i < C::BT; i += C::THREADS)
            if (t0 + i < a.T) a.inv_rms_out[t0 + i] = s_r[i];

    const int tx = threadIdx.x % C::TX, ty = threadIdx.x / C::TX;
    float acc[C::TM][C::TN];
#pragma unroll
    for (int i = 0; i < C::TM; ++i)
#pragma unroll
        for (int jj = 0; jj < C::TN; ++jj) acc[i][jj] = 0.f;

    constexpr int UPR = C::BK / 8;
    int nt = nt_begin, kt = 0;
    for (int j = 0; j < iters; ++j) {
        cp_async_wait<C::S - 2>();
        __syncthreads();
        issue();
        const bf16* X = raw + (j % C::S) * C::STAGE;
        const bf16* W = X + C::BT * C::BK;
        const bf16* WN = W + C::BN * C::BK;
        // Operand (x*r)*w in fp32 and W upcast, both transposed to [k][row].
        for (int unit = threadIdx.x; unit < C::BT * UPR; unit += C::THREADS) {
            const int row = unit / UPR, u = unit % UPR;
            const uint4 xv = lds16(X + tile_off<C::BK>(row, u));
            const uint4 wv = lds16(WN + u * 8);
            const float r = s_r[row];
            const u32 x4[4] = {xv.x, xv.y, xv.z, xv.w}, w4[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                op[(u * 8 + 2 * e) * (C::BT + C::PAD) + row] = __fmul_rn(__fmul_rn(bf_lo(x4[e]), r), bf_lo(w4[e]));
                op[(u * 8 + 2 * e + 1) * (C::BT + C::PAD) + row] =
                    __fmul_rn(__fmul_rn(bf_hi(x4[e]), r), bf_hi(w4[e]));
            }
        }
        for (int unit = threadIdx.x; unit < C::BN * UPR; unit += C::THREADS) {
            const int row = unit / UPR, u = unit % UPR;
            const uint4 wv = lds16(W + tile_off<C::BK>(row, u));
            const u32 w4[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                wf[(u * 8 + 2 * e) * (C::BN + C::PAD) + row] = bf_lo(w4[e]);
                wf[(u * 8 + 2 * e + 1) * (C::BN + C::PAD) + row] = bf_hi(w4[e]);
            }
        }
        __syncthreads();
#pragma unroll 4
        for (int kk = 0; kk < C::BK; ++kk) {
            float av[C::TM], bv[C::TN];
            const float* opk = op + kk * (C::BT + C::PAD);
            const float* wfk = wf + kk * (C::BN + C::PAD);
            lds_f<C::TMH>(av, opk + ty * C::TMH);
            lds_f<C::TMH>(av + C::TMH, opk + C::BT / 2 + ty * C::TMH);
            lds_f<C::TNH>(bv, wfk + tx * C::TNH);
            lds_f<C::TNH>(bv + C::TNH, wfk + C::BN / 2 + tx * C::TNH);
#pragma unroll
            for (int i = 0; i < C::TM; ++i)
#pragma unroll
                for (int jj = 0; jj < C::TN; ++jj) acc[i][jj] = fmaf(av[i], bv[jj], acc[i][jj]);
        }
        if (kt == KT - 1) {
#pragma unroll
            for (int i = 0; i < C::TM; ++i) {
                const int t = t0 + (i < C::TMH ? ty * C::TMH + i : C::BT / 2 + ty * C::TMH + i - C::TMH);
#pragma unroll
                for (int jj = 0; jj < C::TN; ++jj) {
                    const int n = nt * C::BN + (jj < C::TNH ? tx * C::TNH + jj : C::BN / 2 + tx * C::TNH + jj - C::TNH);
                    if (t < a.T && n < N) store_one<FAULT>(a, t, n, acc[i][jj]);
                    acc[i][jj] = 0.f;
                }
            }
        }
        if (++kt == KT) kt = 0, ++nt;
    }
    cp_async_wait<0>();
}

}  // namespace fg
