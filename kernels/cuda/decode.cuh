// The decode kernels of fused_rmsnorm_qkv.cu (spliced into it by the Rust side, like common.cuh):
// few tokens, the op is a stream of W.
#pragma once

namespace fg {

// ------------------------------------------------------------------------------------------------
// Decode family (few tokens): the op is a stream of W.
//
// Tensor-core decode kernels (dv_kernel: NAME__dec16 for 16 tokens per block, NAME__dec32 for
// 32), from v10 of NOTES.md. A block owns 32 rows of W and 16*MT tokens and has 16 warps: warp w
// computes the rows of n8 group (w % 4) over k-slice (w / 4), 8 rows x 256 columns at H = 1024.
// The block's 64 KiB of W is all in flight from the start: warps 0-3 issue one bulk copy per
// (row, k-slice) into shared memory, each k-slice completing on its own mbarrier (the `r` kernels
// instead load W straight into MMA fragment registers, 16 bytes per lane and chunk: the
// k-permutation above makes a lane's W fragment one contiguous 16-byte run of its row). Then the
// wait for the previous grid (a no-op unless launched chained), the loads of x and the norm weight
// for the tokens warp w normalises (w, w + 16), the release of the next grid, the operand into
// shared memory, one barrier, and every warp runs its slice's MMA chain (16 MMAs at H = 1024) once
// its slice of W has landed. The four slices of each output are added in slice order through
// shared memory (the exact order of the header comment), and slice 0's warp stores.
//
// Launch rule: block = DV_THREADS (512) threads; grid = (ceil(N / 32), ceil(T / (16*MT)));
// dynamic shared memory = dv_smem_bytes(MT, Hp, WSMEM) (the operand, Hp = H rounded up to 64; the
// slices' partial sums; W for WSMEM); needs the 16-byte path (H % 8 == 0, 16-byte aligned x,
// w_norm, W) and that much shared memory, and sm_90 for WSMEM; the Rust side uses the `r` kernels
// or the tile kernels otherwise (`decode_plan`). Rows of the operand past T are left unwritten:
// an MMA output row depends on its own A row only, and those rows are never stored.
//
// fp32 decode kernel (dec_f32_kernel, fusegate_f32__dec16, the v5 design): 8 warps normalise
// the block's 16 tokens into shared memory (fp32), 4 of them then stream 32 rows of W over all of
// H. Launch rule: block = 256 threads; grid = (ceil(N / 32), ceil(T / 16)); dynamic shared memory
// = 16 * Hp * 4.

constexpr int DEC_WARPS = 8, DEC_THREADS = DEC_WARPS * 32;  // all warps normalise
constexpr int DEC_CWARPS = 4, DEC_ROWS = DEC_CWARPS * 8;      // warps 0-3 stream W
constexpr int DEC_G = 8;     // k-chunks per register batch
constexpr int DEC_NBUF = 4;  // batches in flight: 32 chunks x 16 B per lane (all of W at H = 1024), 64 KiB per block

// Shared-memory offset (elements) of 16-byte unit u of row `row` in the decode operand [rows][Hp]:
// odd rows swap 64-byte halves, as tile_off does, so fragment loads are conflict-free.
__device__ __forceinline__ int dec_off(int row, int u, int upr) { return (row * upr + (u ^ ((row & 1) << 2))) * 8; }

// inv_rms and the GEMM operand of the block's ROWS tokens into shared memory (zeros past H;
// rows past T untouched). F32OP: operand (x*r)*w in fp32, [ROWS][Hp] row-major; otherwise
// NORM's bf16 B, swizzled. Warp w takes rows w*RB .. w*RB+RB-1: one pass sums their squares
// (RB rows' loads in flight together), the second reads x again (L1) and writes the operand.
// The inv_rms order (lane-strided, then a xor butterfly) is block_inv_rms's: the tile kernels
// compute the same bits.
template <int NORM, int ROWS, bool F32OP>
__device__ __forceinline__ void dec_prologue(const Args& a, int t0, int Hp, void* smem, float* s_r) {
    constexpr int RB = ROWS / DEC_WARPS;
    static_assert(RB * DEC_WARPS == ROWS, "rows per warp");
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int live = min(ROWS, a.T - t0), upr = Hp / 8;
    const int r0 = warp * RB;
    const bool report = blockIdx.x == 0;
    if (r0 < live) {
        // Pass 2 re-reads the norm weight for every unit: bring it into L1 now, under pass 1.
        for (int u = lane; u * 8 < a.H; u += 32) prefetch_l1(a.w_norm + u * 8);
        float acc[RB];
        const bf16* row[RB];
#pragma unroll
        for (int i = 0; i < RB; ++i) {
            acc[i] = 0.f;
            row[i] = a.x + static_cast<size_t>(t0 + min(r0 + i, live - 1)) * a.H;
        }
#pragma unroll(8 / RB)
        for (int k = lane * 8; k < a.H; k += 256) {
            uint4 u[RB];
#pragma unroll
            for (int i = 0; i < RB; ++i) u[i] = ldg16(row[i] + k);
#pragma unroll
            for (int i = 0; i < RB; ++i) {
                const u32 w4[4] = {u[i].x, u[i].y, u[i].z, u[i].w};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float f0 = bf_lo(w4[e]), f1 = bf_hi(w4[e]);
                    acc[i] = fmaf(f0, f0, acc[i]);
                    acc[i] = fmaf(f1, f1, acc[i]);
                }
            }
        }
        float r[RB];
#pragma unroll
        for (int i = 0; i < RB; ++i) {
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
            r[i] = inv_rms_from_sum(acc[i], a.H, a.eps);
            if (lane == 0 && r0 + i < live) {
                s_r[r0 + i] = r[i];
                if (report && a.inv_rms_out != nullptr) a.inv_rms_out[t0 + r0 + i] = r[i];
            }
        }
        const bool b_vec = (reinterpret_cast<unsigned long long>(a.b_out) & 15) == 0;
#pragma unroll 4
        for (int u = lane; u < upr; u += 32) {
            const int k = u * 8;
            const uint4 wv = k < a.H ? ldg16(a.w_norm + k) : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int i = 0; i < RB; ++i) {
                const int rr = r0 + i;
                if (rr >= live) break;
                const uint4 xv = k < a.H ? ldg16(row[i] + k) : make_uint4(0, 0, 0, 0);
                if constexpr (F32OP) {
                    const u32 x4[4] = {xv.x, xv.y, xv.z, xv.w}, w4[4] = {wv.x, wv.y, wv.z, wv.w};
                    float o[8];
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        o[2 * e] = __fmul_rn(__fmul_rn(bf_lo(x4[e]), r[i]), bf_lo(w4[e]));
                        o[2 * e + 1] = __fmul_rn(__fmul_rn(bf_hi(x4[e]), r[i]), bf_hi(w4[e]));
                    }
                    float* dst = static_cast<float*>(smem) + rr * Hp + k;
                    reinterpret_cast<float4*>(dst)[0] = make_float4(o[0], o[1], o[2], o[3]);
                    reinterpret_cast<float4*>(dst)[1] = make_float4(o[4], o[5], o[6], o[7]);
                } else {
                    const uint4 bv = make_uint4(norm_pair<NORM>(xv.x, wv.x, r[i]), norm_pair<NORM>(xv.y, wv.y, r[i]),
                                                norm_pair<NORM>(xv.z, wv.z, r[i]), norm_pair<NORM>(xv.w, wv.w, r[i]));
                    sts16(static_cast<bf16*>(smem) + dec_off(rr, u, upr), bv);
                    if (report && a.b_out != nullptr && k < a.H) store_b8<false>(a, t0 + rr, k, bv, b_vec);
                }
            }
        }
    }
    __syncthreads();
}

// The lane's W fragments for chunks grp*DEC_G .. +DEC_G-1 (zeros past H or N).
__device__ __forceinline__ void dec_load(uint4 (&buf)[DEC_G], const bf16* wrow, bool row_ok, int grp, int c, int H) {
#pragma unroll
    for (int i = 0; i < DEC_G; ++i) {
        const int k = (grp * DEC_G + i) * 32 + c * 8;
        buf[i] = row_ok && k < H ? ldg16(wrow + k) : make_uint4(0, 0, 0, 0);
    }
}

// ------------------------------------------------------------------------------------------------
// Tensor-core decode kernel (comment above the fp32 one's constants).

constexpr int DV_GROUPS = 4, DV_ROWS = DV_GROUPS * 8;                  // n8 groups: 32 rows of W per block
constexpr int DV_WARPS = DV_GROUPS * KSLICES, DV_THREADS = DV_WARPS * 32;  // one warp per (group, k-slice)
constexpr int DV_G = 8;  // k-chunks per W register batch: a whole slice at H <= 1024
// Bytes of shared memory for the partial sums of slices 1..3 (float4 per lane and m-tile).
__host__ __device__ constexpr int dv_red_bytes(int mt) { return (KSLICES - 1) * DV_GROUPS * mt * 32 * 16; }
// W in shared memory (WSMEM kernels): row r of the block's 32 at r * dv_w_stride(Hp) bytes. The
// 64 spare bytes put rows g and g+1 in opposite halves of the 128 banks' width, so a quarter warp's
// fragment loads (rows g, g+1 x 64 contiguous bytes) are conflict-free.
__host__ __device__ constexpr int dv_w_stride(int hp) { return hp * 2 + 64; }
// Dynamic shared memory of a decode kernel: operand, partial sums, and W when WSMEM.
__host__ __device__ constexpr int dv_smem_bytes(int mt, int hp, bool wsmem) {
    return 16 * mt * hp * 2 + dv_red_bytes(mt) + (wsmem ? DV_ROWS * dv_w_stride(hp) : 0);
}

// A 16-byte load of W, read once: not allocated in L1 (keeps x and the norm weight there).
// volatile pins it where it is written: before the prologue's math and barrier.
__device__ __forceinline__ uint4 ldg16_stream(const void* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

// The lane's W fragments for chunks ch0 .. ch0+DV_G-1 of its row, those below `chi` (zeros past H
// or N, and for chunks of other slices).
__device__ __forceinline__ void dv_load_w(uint4 (&buf)[DV_G], const bf16* wrow, bool row_ok, int ch0, int chi, int c,
                                          int H) {
#pragma unroll
    for (int i = 0; i < DV_G; ++i) {
        const int k = (ch0 + i) * 32 + c * 8;
        buf[i] = row_ok && ch0 + i < chi && k < H ? ldg16_stream(wrow + k) : make_uint4(0, 0, 0, 0);
    }
}

// WSMEM: warp `slice` (0..3) fetches the block's W rows over k-slice `slice` into shared memory,
// one bulk copy per row (lane = row), completing on bar (initialised, and the initialisation made
// visible, before). The tail [H, Hp) of each row is zeroed by dv_zero_w_tail (0 * garbage could be
// NaN). Rows past N are not fetched: they only feed output columns that are never stored.
__device__ __forceinline__ void dv_fetch_w(const Args& a, unsigned char* wsm, int wstride, u32 bar, int slice,
                                           int N) {
    const int lane = threadIdx.x & 31, nch = (a.H + 31) / 32;
    const int k_lo = ks_lo(slice, nch) * 32, k_hi = min(ks_lo(slice + 1, nch) * 32, a.H);
    const int bytes = max(k_hi - k_lo, 0) * 2, n0 = blockIdx.x * DV_ROWS, rows = min(DV_ROWS, N - n0);
    if (lane == 0) mbar_arrive_expect_tx(bar, static_cast<u32>(rows * bytes));
    if (lane < rows && bytes > 0)
        bulk_g2s(smem_addr(wsm + lane * wstride + k_lo * 2), a.w_qkv + static_cast<size_t>(n0 + lane) * a.H + k_lo,
                 static_cast<u32>(bytes), bar);
}
__device__ __forceinline__ void dv_zero_w_tail(const Args& a, unsigned char* wsm, int wstride, int Hp) {
    const int per_row = (Hp - a.H) / 8;
    for (int i = threadIdx.x; i < DV_ROWS * per_row; i += DV_THREADS)
        sts16(wsm + (i / per_row) * wstride + (a.H + (i % per_row) * 8) * 2, make_uint4(0, 0, 0, 0));
}

// Units (16 bytes) of x and the norm weight a lane handles per segment of 1024 columns: u = seg *
// 128 + lane + 32 j, j < 4, i.e. k = lane*8 + 256*i in increasing order: block_inv_rms's order.
constexpr int DV_UPL = 4;

// This block's share of [p, p + bytes) (bytes a multiple of 16) towards L2: the grid's blocks
// along x split it in 128-byte lines, so each line is asked for once.
__device__ __forceinline__ void dv_prefetch_share(const void* p, int bytes) {
    const int share = ((bytes + gridDim.x - 1) / gridDim.x + 127) & ~127, lo = blockIdx.x * share;
    if (lo < bytes) bulk_prefetch_l2(static_cast<const unsigned char*>(p) + lo, static_cast<u32>(min(share, bytes - lo)));
}

// Loads segment `seg` of the lane's x units for the warp's MT tokens (rows warp + 16 i of the
// block's tile; nothing for rows past T; coherent loads: x may come from the previous grid) and of
// the norm weight.
template <int MT>
__device__ __forceinline__ void dv_load_x(uint4 (&xr)[MT][DV_UPL], uint4 (&wn)[DV_UPL], const Args& a, int t0, int live,
                                          int seg) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < DV_UPL; ++j) {
        const int k = (seg * 128 + lane + 32 * j) * 8;
#pragma unroll
        for (int i = 0; i < MT; ++i) {
            const int rr = warp + 16 * i;
            xr[i][j] =
                rr < live && k < a.H ? ldg16_fresh(a.x + static_cast<size_t>(t0 + rr) * a.H + k) : make_uint4(0, 0, 0, 0);
        }
        wn[j] = warp < live && k < a.H ? ldg16(a.w_norm + k) : make_uint4(0, 0, 0, 0);
    }
}

// The GEMM operand of the warp's tokens into shared memory (swizzled, zeros from H to Hp), and the
// debug copies of inv_rms and B (block x == 0). Expects segment 0 already loaded into xr / wn.
// Sum of squares: block_inv_rms's order exactly (lane-strided k, fmaf per element, xor butterfly),
// so exact's decode and tile kernels see the same inv_rms and operand bits.
template <int NORM, int MT>
__device__ __forceinline__ void dv_prologue(const Args& a, int t0, int live, int upr, bf16* smem,
                                            uint4 (&xr)[MT][DV_UPL], uint4 (&wn)[DV_UPL]) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (warp >= live) return;  // no token for this warp (rows warp + 16 i, i >= 1, are past T too)
    const int nseg = (upr + 127) / 128;
    float acc[MT];
#pragma unroll
    for (int i = 0; i < MT; ++i) acc[i] = 0.f;
    for (int seg = 0; seg < nseg; ++seg) {
        if (seg > 0) dv_load_x<MT>(xr, wn, a, t0, live, seg);
#pragma unroll
        for (int j = 0; j < DV_UPL; ++j) {
            if ((seg * 128 + lane + 32 * j) * 8 >= a.H) break;
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                const u32 w4[4] = {xr[i][j].x, xr[i][j].y, xr[i][j].z, xr[i][j].w};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float f0 = bf_lo(w4[e]), f1 = bf_hi(w4[e]);
                    acc[i] = fmaf(f0, f0, acc[i]);
                    acc[i] = fmaf(f1, f1, acc[i]);
                }
            }
        }
    }
    const bool report = blockIdx.x == 0;
    float r[MT];
#pragma unroll
    for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
        r[i] = inv_rms_from_sum(acc[i], a.H, a.eps);
        const int rr = warp + 16 * i;
        if (lane == 0 && rr < live && report && a.inv_rms_out != nullptr) a.inv_rms_out[t0 + rr] = r[i];
    }
    const bool b_vec = (reinterpret_cast<unsigned long long>(a.b_out) & 15) == 0;
    for (int seg = 0; seg < nseg; ++seg) {
        if (nseg > 1) dv_load_x<MT>(xr, wn, a, t0, live, seg);
#pragma unroll
        for (int j = 0; j < DV_UPL; ++j) {
            const int u = seg * 128 + lane + 32 * j, k = u * 8;
            if (u >= upr) break;
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                const int rr = warp + 16 * i;
                if (rr >= live) break;
                const uint4 xv = xr[i][j], wv = wn[j];
                const uint4 bv = k < a.H ? make_uint4(norm_pair<NORM>(xv.x, wv.x, r[i]), norm_pair<NORM>(xv.y, wv.y, r[i]),
                                                      norm_pair<NORM>(xv.z, wv.z, r[i]), norm_pair<NORM>(xv.w, wv.w, r[i]))
                                         : make_uint4(0, 0, 0, 0);
                sts16(smem + dec_off(rr, u, upr), bv);
                if (report && a.b_out != nullptr && k < a.H) store_b8<false>(a, t0 + rr, k, bv, b_vec);
            }
        }
    }
}

// CHAINS = 2 (mixed and its mutants): inside a slice, even and odd chunks accumulate in two MMA
// chains, added at the end (a k-order of their own: mixed may be batch-variant). CHAINS = 1
// (exact): one chain per slice, the order shared with the tile kernels.
// WSMEM: W comes by bulk copies into shared memory (NAME__dec16 / __dec32, sm_90): few registers,
// so with MINB = 2 a block of the next grid fits beside a running one. Otherwise W is loaded into
// the MMA fragment registers (NAME__dec16r / __dec32r: any H).
// Programmatic dependent launch: the block starts fetching W (a weight: nothing earlier in the
// stream writes it), then waits for the previous grid (griddepcontrol.wait) before it reads x or
// writes anything, and lets the next grid launch once its x loads are issued, so that they go to
// memory before the next grid's 8 MiB of W requests (NOTES.md v9, v10: released earlier, x queues
// behind them; later, the next W overlaps less). Launched with the PDL attribute, W streams while
// the previous kernel finishes; without it both instructions do nothing.
// Except __dec32 (MT = 2, one block per SM: no block of the next grid can run beside it, so
// nothing competes with its own work): it asks x and the norm weight into L2 first (a hint, legal
// before the wait) and releases the next grid before its wait (v12, run 20: chained T = 32 7.06
// -> 6.85 us, serial 7.83 -> 7.71; the same at two blocks per SM costs 0.3-1.4 us).
template <int NORM, int FAULT, int MT, int CHAINS, bool WSMEM>
__device__ __forceinline__ void dv_kernel(const Args a) {
    constexpr int TT = 16 * MT;
    extern __shared__ uint4 fg_smem[];
    __shared__ __align__(8) unsigned long long wbar[KSLICES];
    const int Hp = (a.H + 63) & ~63, upr = Hp / 8, wstride = dv_w_stride(Hp);
    check_launch(DV_THREADS, dv_smem_bytes(MT, Hp, WSMEM));
    bf16* opnd = reinterpret_cast<bf16*>(fg_smem);
    float4* red = reinterpret_cast<float4*>(reinterpret_cast<unsigned char*>(fg_smem) + TT * Hp * 2);
    unsigned char* wsm = reinterpret_cast<unsigned char*>(fg_smem) + TT * Hp * 2 + dv_red_bytes(MT);
    const int N = (a.Nq + 2 * a.Nkv) * a.D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int grp = warp % DV_GROUPS, slice = warp / DV_GROUPS;
    const int t0 = blockIdx.y * TT, live = min(TT, a.T - t0);
    const int n = blockIdx.x * DV_ROWS + grp * 8 + g;  // this lane's row of W
    const bool row_ok = n < N;
    const bf16* wrow = a.w_qkv + static_cast<size_t>(row_ok ? n : 0) * a.H;
    const int nch = (a.H + 31) / 32;
    const int c_lo = ks_lo(slice, nch), c_hi = ks_lo(slice + 1, nch);

    constexpr bool ALONE = WSMEM && MT == 2;  // one block per SM (see above)
    if constexpr (ALONE) {
        if (threadIdx.x == 0) {
            dv_prefetch_share(a.x + static_cast<size_t>(t0) * a.H, live * a.H * 2);
            dv_prefetch_share(a.w_norm, a.H * 2);
        }
    }
    // W first (all of the block's W in flight from the start), then the previous grid, then x.
    uint4 xr[MT][DV_UPL], wn[DV_UPL], wb[DV_G];
    if constexpr (WSMEM) {
        if (threadIdx.x < KSLICES) mbar_init(smem_addr(&wbar[threadIdx.x]), 1);
        __syncthreads();
        if (warp < KSLICES) dv_fetch_w(a, wsm, wstride, smem_addr(&wbar[warp]), warp, N);
    } else {
        dv_load_w(wb, wrow, row_ok, c_lo, c_hi, c, a.H);
    }
    if constexpr (ALONE) griddep_launch_dependents();
    constexpr bool EARLY_X = FAULT == FAULT_EARLY_X;  // mutant-early-x's defect
    if constexpr (EARLY_X) dv_load_x<MT>(xr, wn, a, t0, live, 0);
    griddep_wait();
    if constexpr (!EARLY_X) dv_load_x<MT>(xr, wn, a, t0, live, 0);
    if constexpr (!ALONE) griddep_launch_dependents();
    if constexpr (WSMEM) dv_zero_w_tail(a, wsm, wstride, Hp);
    dv_prologue<NORM, MT>(a, t0, live, upr, opnd, xr, wn);
    __syncthreads();
    if constexpr (WSMEM) mbar_wait(smem_addr(&wbar[slice]), 0);
    const unsigned char* wfrag = wsm + (grp * 8 + g) * wstride + c * 16;  // + 64 per chunk (WSMEM)

    // Row bases of this lane's A fragments; unit (ch*4 + c) of row r sits at
    // ((ch ^ (r & 1)) * 4 + c) * 8 (dec_off), and rows g, g+8, g+16, ... share g's parity.
    const bool upper = live > 8 || MT > 1;  // rows 8..15 of the first m-tile hold tokens
    const int p = g & 1;
    const bf16* lo[MT];
    const bf16* hi[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        lo[m] = opnd + (m * 16 + g) * upr * 8 + c * 8;
        hi[m] = lo[m] + 8 * upr * 8;
    }
    float acc[CHAINS][MT][4];
#pragma unroll
    for (int q = 0; q < CHAINS; ++q)
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[q][m][e] = 0.f;
    for (int ch0 = c_lo; ch0 < c_hi; ch0 += DV_G) {
        if (!WSMEM && ch0 != c_lo) dv_load_w(wb, wrow, row_ok, ch0, c_hi, c, a.H);
#pragma unroll
        for (int i = 0; i < DV_G; ++i) {
            const int ch = ch0 + i;  // DV_G is even: the chain parity is i's
            if (ch >= c_hi) break;
            if constexpr (WSMEM) wb[i] = lds16(wfrag + ch * 64);
            const int off = (ch ^ p) * 32;
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                float(&d)[4] = acc[CHAINS == 2 ? (i & 1) : 0][m];
                const uint4 x0 = lds16(lo[m] + off);
                const uint4 x1 = (m > 0 || upper) ? lds16(hi[m] + off) : make_uint4(0, 0, 0, 0);
                mma16816(d, x0.x, x1.x, x0.y, x1.y, wb[i].x, wb[i].y);
                mma16816(d, x0.z, x1.z, x0.w, x1.w, wb[i].z, wb[i].w);
            }
        }
    }
    if constexpr (CHAINS == 2) {
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[0][m][e] = __fadd_rn(acc[0][m][e], acc[1][m][e]);
    }

    const int col = blockIdx.x * DV_ROWS + grp * 8 + 2 * c;
    // Slices 1..3 hand their partial sums to slice 0's warp, which adds them in slice order.
    if (slice > 0) {
#pragma unroll
        for (int m = 0; m < MT; ++m)
            red[(((slice - 1) * DV_GROUPS + grp) * MT + m) * 32 + lane] =
                make_float4(acc[0][m][0], acc[0][m][1], acc[0][m][2], acc[0][m][3]);
    }
    __syncthreads();
    if (slice > 0) return;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = __fadd_rn(0.f, acc[0][m][e]);
#pragma unroll
        for (int s = 1; s < KSLICES; ++s) {
            const float4 pv = red[(((s - 1) * DV_GROUPS + grp) * MT + m) * 32 + lane];
            v[0] = __fadd_rn(v[0], pv.x), v[1] = __fadd_rn(v[1], pv.y);
            v[2] = __fadd_rn(v[2], pv.z), v[3] = __fadd_rn(v[3], pv.w);
        }
        if (col < N) {
            const int t = t0 + m * 16 + g;
            if (t < a.T) store_pair<FAULT>(a, t, col, v[0], v[1]);
            if (t + 8 < a.T) store_pair<FAULT>(a, t + 8, col, v[2], v[3]);
        }
    }
}

// fp32 decode: FFMA. A lane owns 8 consecutive k of each chunk of its row (the same 16-byte W
// loads), accumulates every token of the block over them in increasing k, and the four lanes of
// a row are summed in a fixed butterfly at the end: deterministic, though not the order of
// f32_kernel (fusegate_f32's contract does not promise batch invariance).
template <int FAULT>
__device__ __forceinline__ void dec_f32_kernel(const Args a) {
    constexpr int TT = 16;
    extern __shared__ uint4 fg_smem[];
    __shared__ float s_r[TT];
    const int Hp = (a.H + 63) & ~63;
    check_launch(DEC_THREADS, TT * Hp * 4);
    const int N = (a.Nq + 2 * a.Nkv) * a.D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const bool streams = warp < DEC_CWARPS;
    const int t0 = blockIdx.y * TT;
    const int n = blockIdx.x * DEC_ROWS + (warp % DEC_CWARPS) * 8 + g;
    const bool row_ok = streams && n < N;
    const bf16* wrow = a.w_qkv + static_cast<size_t>(row_ok ? n : 0) * a.H;
    const int nch = (a.H + 31) / 32, ngrp = (nch + DEC_G - 1) / DEC_G;

    uint4 b0[DEC_G], b1[DEC_G], b2[DEC_G], b3[DEC_G];
    dec_load(b0, wrow, row_ok, 0, c, a.H);
    dec_load(b1, wrow, row_ok, 1, c, a.H);
    dec_load(b2, wrow, row_ok, 2, c, a.H);
    dec_load(b3, wrow, row_ok, 3, c, a.H);
    const float* OP = reinterpret_cast<const float*>(fg_smem);
    dec_prologue<NORM_F32, TT, true>(a, t0, Hp, fg_smem, s_r);
    if (!streams) return;
    const int live = min(TT, a.T - t0);

    float acc[TT];
#pragma unroll
    for (int t = 0; t < TT; ++t) acc[t] = 0.f;
    auto compute = [&](const uint4 (&buf)[DEC_G], int grp) {
#pragma unroll
        for (int i = 0; i < DEC_G; ++i) {
            const int ch = grp * DEC_G + i;
            if (ch >= nch) break;
            const int k = ch * 32 + c * 8;
            const u32 w4[4] = {buf[i].x, buf[i].y, buf[i].z, buf[i].w};
            float w[8];
#pragma unroll
            for (int e = 0; e < 4; ++e) w[2 * e] = bf_lo(w4[e]), w[2 * e + 1] = bf_hi(w4[e]);
#pragma unroll
            for (int t = 0; t < TT; ++t) {
                if (t < live) {
                    const float4 o0 = *reinterpret_cast<const float4*>(OP + t * Hp + k);
                    const float4 o1 = *reinterpret_cast<const float4*>(OP + t * Hp + k + 4);
                    float s = acc[t];
                    s = fmaf(o0.x, w[0], s), s = fmaf(o0.y, w[1], s), s = fmaf(o0.z, w[2], s), s = fmaf(o0.w, w[3], s);
                    s = fmaf(o1.x, w[4], s), s = fmaf(o1.y, w[5], s), s = fmaf(o1.z, w[6], s), s = fmaf(o1.w, w[7], s);
                    acc[t] = s;
                }
            }
        }
    };
    for (int grp = 0; grp < ngrp; grp += DEC_NBUF) {
        compute(b0, grp);
        dec_load(b0, wrow, row_ok, grp + 4, c, a.H);
        compute(b1, grp + 1);
        dec_load(b1, wrow, row_ok, grp + 5, c, a.H);
        compute(b2, grp + 2);
        dec_load(b2, wrow, row_ok, grp + 6, c, a.H);
        compute(b3, grp + 3);
        dec_load(b3, wrow, row_ok, grp + 7, c, a.H);
    }
#pragma unroll
    for (int t = 0; t < TT; ++t) {
        acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], 1);
        acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], 2);
    }
    if (row_ok) {
#pragma unroll
        for (int t = 0; t < TT; ++t)
            if (t % 4 == c && t < live) store_one<FAULT>(a, t0 + t, n, acc[t]);
    }
}

}  // namespace fg
