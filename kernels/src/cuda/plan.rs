//! The one place a kernel and its tile are chosen from T: [`route`]. Tile and decode-kernel
//! geometry mirror the configs in fused_rmsnorm_qkv.cu (checked by the tests below, and on the
//! device: the kernels trap when launched with fewer threads or less shared memory than they need).

use crate::op::{Dims, Shape};
use crate::registry::{CudaImpl, Entry, NormRounding};

/// A block tile of one fused kernel specialisation, mirroring the `MmaCfg` / `F32Cfg` typedefs in
/// fused_rmsnorm_qkv.cu (the kernel traps when launched with fewer threads or less shared memory
/// than its config needs, so a mismatch fails loudly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// Appended to the registry's kernel name: `fusegate_mixed__t16`.
    pub suffix: &'static str,
    /// Tokens per block.
    pub bt: u32,
    /// Rows of W (output columns) per block.
    pub bn: u32,
    pub threads: u32,
    /// Dynamic shared memory, bytes.
    pub smem: u32,
}

/// `MmaCfg<BT, BN, WT, WN, BK, S>`: S stages of raw x, W and norm-weight k-tiles.
const fn mma_tile(suffix: &'static str, bt: u32, bn: u32, warps: u32, bk: u32, stages: u32) -> Tile {
    Tile { suffix, bt, bn, threads: warps * 32, smem: stages * (bt + bn + 1) * bk * 2 }
}

/// `F32Cfg<BT, BN, TM, TN, BK, S>`: raw stages plus fp32 operand and W tiles ([BK][rows + 4]).
const fn f32_tile(suffix: &'static str, bt: u32, bn: u32, tm: u32, tn: u32, bk: u32, stages: u32) -> Tile {
    let raw = stages * (bt + bn + 1) * bk * 2;
    Tile { suffix, bt, bn, threads: (bt / tm) * (bn / tn), smem: raw + bk * (bt + 4) * 4 + bk * (bn + 4) * 4 }
}

/// Tensor-core specialisations, smallest first.
pub const MMA_TILES: [Tile; 4] = [
    mma_tile("__t16", 16, 16, 2, 128, 6),
    mma_tile("__t32", 32, 16, 2, 128, 5),
    mma_tile("__t64", 64, 64, 8, 64, 4),
    mma_tile("__t128", 128, 128, 8, 64, 4),
];

/// fp32 (CUDA-core) specialisations, smallest first.
pub const F32_TILES: [Tile; 4] = [
    f32_tile("__t8", 8, 32, 2, 2, 64, 6),
    f32_tile("__t32", 32, 32, 4, 2, 64, 4),
    f32_tile("__t64", 64, 64, 4, 4, 32, 4),
    f32_tile("__t128", 128, 128, 8, 8, 32, 3),
];

/// The tile kernel for T, used where [`decode_plan`] declines (T > [`DEC_MAX_T`], H % 8 != 0, or
/// an operand too large for shared memory). Small T takes the smallest tile whose N-split
/// (N / BN blocks) still covers every SM; mid-size T the 64x64 tile; T > 256 the 128x128 tile
/// (with the persistent N-loop, one wave). Every tensor-core tile shares one k-order with each
/// other and with exact's decode kernels, so this choice never changes exact's bits.
///
/// Launch selection, in full ([`route`]): fused entries go to `NAME__dec16` (T <= 16) or
/// `NAME__dec32` (T <= DEC_MAX_T) when [`decode_plan`] accepts the shape (fp32: `__dec16` for
/// T <= 32), else to `NAME` + [`pick_tile`]'s suffix with [`grid_for`]'s grid.
pub fn pick_tile(fp32: bool, t: usize) -> Tile {
    if fp32 {
        match t {
            0..=8 => F32_TILES[0],
            9..=32 => F32_TILES[1],
            33..=256 => F32_TILES[2],
            _ => F32_TILES[3],
        }
    } else {
        match t {
            0..=16 => MMA_TILES[0],
            17..=64 => MMA_TILES[1],
            65..=256 => MMA_TILES[2],
            _ => MMA_TILES[3],
        }
    }
}

/// A decode-kernel launch (`__dec16` / `__dec32` in fused_rmsnorm_qkv.cu). Tensor-core variants
/// (`dv_kernel`): 512 threads, 16 warps = 4 groups of 8 W rows x 4 k-slices, 32 rows of W per
/// block, the block's 16 or 32 tokens normalised over all of H into shared memory, plus the
/// k-slices' partial sums, plus (`__dec16` / `__dec32`) the block's W, fetched by bulk copies; the
/// `r` kernels (`__dec16r` / `__dec32r`) hold W in registers instead, for an H whose W rows do not
/// fit. fp32 (`dec_f32_kernel`): 256 threads (8 warps normalise, 4 stream W), 32 rows, 16 tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodePlan {
    pub suffix: &'static str,
    pub grid: (u32, u32, u32),
    pub threads: u32,
    pub smem: u32,
}

/// Threads of an fp32 decode block (`DEC_THREADS`), of a tensor-core one (`DV_THREADS`), and rows of
/// W either owns (`DEC_ROWS` = `DV_ROWS`).
pub const DEC_THREADS: u32 = 256;
pub const DV_THREADS: u32 = 512;
pub const DEC_ROWS: usize = 32;
/// Shared memory of a tensor-core decode block beyond its operand: the partial sums of k-slices
/// 1..3, a float4 per lane of each of 4 groups and MT m-tiles (`dv_red_bytes`).
pub const fn dv_red_bytes(mt: usize) -> usize {
    3 * 4 * mt * 32 * 16
}
/// Dynamic shared memory of a tensor-core decode block (`dv_smem_bytes`): operand [16*MT][hp],
/// partial sums, and with `w_smem` the block's 32 rows of W at `hp * 2 + 64` bytes each.
pub const fn dv_smem_bytes(mt: usize, hp: usize, w_smem: bool) -> usize {
    16 * mt * hp * 2 + dv_red_bytes(mt) + if w_smem { DEC_ROWS * (hp * 2 + 64) } else { 0 }
}

/// Where the tensor-core decode kernels keep W.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeW {
    /// Bulk copies into shared memory where the rows fit and the device has them (sm_90), else
    /// registers. The default.
    Auto,
    /// Always the register kernels (`__dec16r` / `__dec32r`).
    Registers,
}

/// The decode kernels serve up to [`DEC_MAX_T`] tokens (32 for fp32): they stream W once per 16
/// or 32 tokens (from L2 after the first T-slice), with no k-tile loop or barrier. They need the
/// 16-byte path (H % 8 == 0) and their shared memory ([`dv_smem_bytes`]) within `max_smem` (the
/// device's opt-in limit per block). `None`: use the tile kernels.
pub fn decode_plan(fp32: bool, s: &Shape, max_smem: usize) -> Option<DecodePlan> {
    decode_plan_with(fp32, s, max_smem, DecodeRule::default())
}

/// Which tensor-core decode kernel serves which T, and where it keeps W. The default is the
/// measured choice; kernel development measures others (`cargo xtask kernels time --decode-max-t`),
/// and a backend opened with a rule other than the default records it in its notes (every
/// results file then carries it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecodeRule {
    /// Largest T of any decode kernel (tile kernels above).
    pub max_t: usize,
    /// Largest T of the 16-token kernels (`__dec16`, several T-tiles above 16); the 32-token
    /// ones above it.
    pub dec16_max_t: usize,
    pub w: DecodeW,
}

impl Default for DecodeRule {
    fn default() -> Self {
        DecodeRule { max_t: DEC_MAX_T, dec16_max_t: 16, w: DecodeW::Auto }
    }
}

/// Largest T the MMA decode kernels take by default (above it the tile kernels are used).
/// Measured on an H200 (NOTES.md): decode 11.7 us against the tile kernel's 25 us at T = 32,
/// but 40 us against 30 us at T = 128 (each 32-token slice re-runs the prologue and re-streams
/// W); 64 is between the two measurements.
pub const DEC_MAX_T: usize = 64;

/// [`decode_plan`] under a given [`DecodeRule`]. Shared-memory W needs sm_90 ([`super::Cuda`] asks for
/// [`DecodeW::Registers`] below it).
pub fn decode_plan_with(fp32: bool, s: &Shape, max_smem: usize, rule: DecodeRule) -> Option<DecodePlan> {
    let hp = s.h.div_ceil(64) * 64;
    let fits = |smem: usize| smem + 1024 <= max_smem;
    let (suffix, rows, threads, smem, max_t) = match (fp32, s.t) {
        (true, 0..=32) => ("__dec16", 16, DEC_THREADS, 16 * hp * 4, 32),
        (true, _) => return None,
        (false, t) => {
            let mt = if t <= rule.dec16_max_t { 1 } else { 2 };
            let w_smem = rule.w == DecodeW::Auto && fits(dv_smem_bytes(mt, hp, true));
            let suffix = match (mt, w_smem) {
                (1, true) => "__dec16",
                (1, false) => "__dec16r",
                (_, true) => "__dec32",
                (_, false) => "__dec32r",
            };
            (suffix, 16 * mt, DV_THREADS, dv_smem_bytes(mt, hp, w_smem), rule.max_t)
        }
    };
    if s.t > max_t || !s.h.is_multiple_of(8) || !fits(smem) {
        return None;
    }
    let grid = (s.n().div_ceil(DEC_ROWS) as u32, s.t.div_ceil(rows) as u32, 1);
    Some(DecodePlan { suffix, grid, threads, smem: smem as u32 })
}

/// Grid x for `tile` at `shape`: with `slots` = SMs x resident blocks per SM, each block takes
/// ceil(tiles / slots) consecutive N-tiles, so that the grid is one wave where it can be.
pub fn grid_for(tile: Tile, shape: &Shape, slots: u32) -> (u32, u32, u32) {
    let tiles_n = shape.n().div_ceil(tile.bn as usize) as u32;
    let tiles_t = shape.t.div_ceil(tile.bt as usize) as u32;
    let npb = (tiles_n * tiles_t).div_ceil(slots.max(1)).clamp(1, tiles_n);
    (tiles_n.div_ceil(npb), tiles_t, 1)
}

/// Most threads of the HF RMSNorm kernel (`NORM_THREADS` in rmsnorm.cu, its launch bound).
const NORM_MAX_THREADS: usize = 256;

/// Threads per row of the HF RMSNorm kernel (rmsnorm.cu) at hidden size `h`: one 16-byte chunk
/// (8 bf16) per thread, in whole warps, at most 256. At H = 1024 that is 128, so twice as many
/// rows are in flight per SM as with 256 (half of whose threads had no chunk). From H alone, so
/// the sum's order never depends on T.
pub fn norm_threads(h: usize) -> u32 {
    (h.div_ceil(8).div_ceil(32) * 32).clamp(32, NORM_MAX_THREADS) as u32
}

/// What runs an entry at one T.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A fused decode kernel (`NAME` + the plan's suffix).
    Decode(DecodePlan),
    /// A fused tile kernel (`NAME` + the tile's suffix), its grid from [`grid_for`].
    Tile(Tile),
    /// The standard path: HF RMSNorm kernel, then one cuBLAS GEMM into a [T, N] buffer whose
    /// column ranges are q, k and v (as torch's `split` of F.linear's output: views, no copy).
    Standard,
}

impl Route {
    /// The kernel name's suffix (`__dec16`, `__t64`), or "" for the standard path: what changes
    /// when the path changes.
    pub fn suffix(&self) -> &'static str {
        match self {
            Route::Decode(p) => p.suffix,
            Route::Tile(t) => t.suffix,
            Route::Standard => "",
        }
    }
}

/// What runs `entry` at `s` on a device with `max_smem` bytes of opt-in shared memory per block,
/// under `rule`: fused entries go to a decode kernel where [`decode_plan_with`] accepts the shape,
/// else to [`pick_tile`]'s tile. `None`: the entry has no CUDA implementation.
pub fn route(entry: &Entry, s: &Shape, max_smem: usize, rule: DecodeRule) -> Option<Route> {
    match entry.cuda {
        CudaImpl::None => None,
        CudaImpl::NormThenCublas => Some(Route::Standard),
        CudaImpl::Fused { .. } => {
            let fp32 = entry.numerics.norm == NormRounding::Fp32;
            Some(match decode_plan_with(fp32, s, max_smem, rule) {
                Some(plan) => Route::Decode(plan),
                None => Route::Tile(pick_tile(fp32, s.t)),
            })
        }
    }
}

/// Largest T scanned for path changes: above the widest tile's switch point, every T takes the
/// same kernel.
pub const ROUTE_SCAN_MAX_T: usize = 4096;

/// Token counts on both sides of every T (up to [`ROUTE_SCAN_MAX_T`]) where [`route`] changes the
/// kernel for `entry`: the T lists of checks come from here, so a new threshold is covered by
/// construction. (cuBLAS's own choices inside the standard path are not visible here.)
pub fn route_boundaries(entry: &Entry, dims: &Dims, max_smem: usize, rule: DecodeRule) -> Vec<usize> {
    let suffix = |t: usize| route(entry, &dims.with_t(t), max_smem, rule).map(|r| r.suffix());
    let mut out = Vec::new();
    for t in 1..ROUTE_SCAN_MAX_T {
        if suffix(t) != suffix(t + 1) {
            out.extend([t, t + 1]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::source::{Source, TILES_CUH};

    /// The fused source as NVRTC sees it (headers spliced in).
    fn fused() -> String {
        Source::Fused.text()
    }

    #[test]
    fn tiles_match_the_kernel_configs() {
        // Mirrors of the typedefs in fused_rmsnorm_qkv.cu (checked again on the device: the
        // kernels trap on a smaller block or less shared memory than they need).
        let mma = [
            "MmaCfg<16, 16, 1, 2, 128, 6> MmaT16",
            "MmaCfg<32, 16, 1, 2, 128, 5> MmaT32",
            "MmaCfg<64, 64, 2, 4, 64, 4> MmaT64",
            "MmaCfg<128, 128, 2, 4, 64, 4> MmaT128",
        ];
        let f32 = [
            "F32Cfg<8, 32, 2, 2, 64, 6> F32T8",
            "F32Cfg<32, 32, 4, 2, 64, 4> F32T32",
            "F32Cfg<64, 64, 4, 4, 32, 4> F32T64",
            "F32Cfg<128, 128, 8, 8, 32, 3> F32T128",
        ];
        for (tile, cfg) in MMA_TILES.iter().zip(mma).chain(F32_TILES.iter().zip(f32)) {
            assert!(TILES_CUH.contains(cfg), "{cfg}");
            assert!(cfg.ends_with(&format!("T{}", tile.bt)), "{cfg} vs {tile:?}");
            assert!(tile.smem <= 227 * 1024);
        }
    }

    #[test]
    fn decode_plans_follow_the_launch_rule() {
        let optin = 227 * 1024;
        let p = decode_plan(false, &Shape::qwen3_06b(1), optin).unwrap();
        let smem = (16 * 1024 * 2 + dv_red_bytes(1) + 32 * (2048 + 64)) as u32;
        assert_eq!(p, DecodePlan { suffix: "__dec16", grid: (128, 1, 1), threads: 512, smem });
        // Two such blocks fit one SM (228 KiB, 1 KiB reserved per block): the next grid's beside.
        assert!(2 * (smem as usize + 1024) <= 228 * 1024);
        let p = decode_plan(false, &Shape::qwen3_06b(32), optin).unwrap();
        let smem = (32 * 1024 * 2 + dv_red_bytes(2) + 32 * (2048 + 64)) as u32;
        assert_eq!(p, DecodePlan { suffix: "__dec32", grid: (128, 1, 1), threads: 512, smem });
        let rule = DecodeRule { w: DecodeW::Registers, ..DecodeRule::default() };
        let regs = decode_plan_with(false, &Shape::qwen3_06b(5), optin, rule).unwrap();
        assert_eq!(regs.suffix, "__dec16r");
        assert_eq!(regs.smem as usize, 16 * 1024 * 2 + dv_red_bytes(1));
        assert_eq!(decode_plan(false, &Shape::qwen3_06b(64), optin).unwrap().grid, (128, 2, 1));
        assert!(decode_plan(false, &Shape::qwen3_06b(65), optin).is_none());
        let rule = DecodeRule { max_t: 2048, ..DecodeRule::default() };
        let p = decode_plan_with(false, &Shape::qwen3_06b(128), optin, rule).unwrap();
        assert_eq!(p.grid, (128, 4, 1));
        let p = decode_plan(true, &Shape::qwen3_06b(32), optin).unwrap();
        assert_eq!(p, DecodePlan { suffix: "__dec16", grid: (128, 2, 1), threads: 256, smem: 16 * 1024 * 4 });
        assert!(decode_plan(true, &Shape::qwen3_06b(33), optin).is_none());
        // W rows too wide for shared memory: registers; an operand too large too: tile kernels.
        let wide = decode_plan(false, &Dims { h: 4096, nq: 4, nkv: 2, d: 64 }.with_t(3), optin).unwrap();
        assert_eq!(wide.suffix, "__dec16r");
        assert!(decode_plan(false, &Dims { h: 8192, nq: 4, nkv: 2, d: 64 }.with_t(20), optin).is_none());
        // H not a multiple of 8: tile kernels.
        assert!(decode_plan(false, &Dims { h: 769, nq: 4, nkv: 2, d: 64 }.with_t(5), optin).is_none());
        // H = 1000 rounds up to 1024 in shared memory.
        let p = decode_plan(false, &Dims { h: 1000, nq: 4, nkv: 2, d: 32 }.with_t(3), optin).unwrap();
        assert_eq!(p.smem as usize, dv_smem_bytes(1, 1024, true));
    }

    #[test]
    fn every_decode_kernel_has_a_wrapper() {
        assert!(fused().contains("NAME##__dec16(FG_PARAMS)"));
        for (suffix, mt, w_smem, minb) in
            [("dec16", 1, true, 2), ("dec32", 2, true, 1), ("dec16r", 1, false, 1), ("dec32r", 2, false, 1)]
        {
            let line = format!("FG_DV_KERNEL(NAME##__{suffix}, NORM, FAULT, {mt}, CHAINS, {w_smem}, {minb})");
            assert!(fused().contains(&line), "{line}");
        }
        assert!(fused().contains("constexpr int DEC_WARPS = 8, DEC_THREADS = DEC_WARPS * 32;"));
        assert!(fused().contains("constexpr int DEC_CWARPS = 4, DEC_ROWS = DEC_CWARPS * 8;"));
        // The tensor-core decode kernels' constants, mirrored by DV_THREADS, DEC_ROWS, dv_red_bytes,
        // dv_smem_bytes.
        assert!(fused().contains("constexpr int KSLICES = 4;"));
        assert!(fused().contains("constexpr int DV_GROUPS = 4, DV_ROWS = DV_GROUPS * 8;"));
        assert!(fused().contains("constexpr int DV_WARPS = DV_GROUPS * KSLICES, DV_THREADS = DV_WARPS * 32;"));
        assert!(fused().contains("return (KSLICES - 1) * DV_GROUPS * mt * 32 * 16;"));
        assert!(fused().contains("constexpr int dv_w_stride(int hp) { return hp * 2 + 64; }"));
        assert!(
            fused().contains("return 16 * mt * hp * 2 + dv_red_bytes(mt) + (wsmem ? DV_ROWS * dv_w_stride(hp) : 0);")
        );
        assert_eq!(DV_THREADS, 4 * 4 * 32);
    }

    #[test]
    fn decode_grids_cover_the_sms_and_prefill_is_one_wave() {
        let s1 = Shape::qwen3_06b(1);
        let tile = pick_tile(false, 1);
        assert_eq!(grid_for(tile, &s1, 132 * 2), (256, 1, 1));
        let s = Shape::qwen3_06b(2048);
        let tile = pick_tile(false, 2048);
        let g = grid_for(tile, &s, 132);
        assert_eq!(g, (8, 16, 1));
        assert!(g.0 * g.1 <= 132);
        // Odd shapes still cover every tile.
        let odd = Dims { h: 769, nq: 4, nkv: 2, d: 64 }.with_t(37);
        let tile = pick_tile(false, 37);
        let (gx, gy, _) = grid_for(tile, &odd, 132);
        let tiles_n = odd.n().div_ceil(tile.bn as usize) as u32;
        assert!(gx * tiles_n.div_ceil(gx) >= tiles_n && gy * tile.bt >= 37);
    }

    #[test]
    fn the_norm_gives_each_thread_one_chunk_in_whole_warps() {
        assert_eq!([8, 256, 1024, 1025, 2048, 4096, 8192].map(norm_threads), [32, 32, 128, 160, 256, 256, 256]);
        // The kernel's shared partial sums hold at most NORM_MAX_THREADS / 32 warps.
        assert!(Source::Rmsnorm.text().contains(&format!("NORM_THREADS = {NORM_MAX_THREADS};")));
    }

    #[test]
    fn route_boundaries_bracket_every_kernel_change() {
        use crate::registry::{EntryId, get};
        let optin = 227 * 1024;
        let rule = DecodeRule::default();
        let dims = Dims::QWEN3_06B;
        let exact = route_boundaries(get(EntryId::Exact), &dims, optin, rule);
        assert_eq!(exact, [16, 17, 64, 65, 256, 257]);
        let f32 = route_boundaries(get(EntryId::F32), &dims, optin, rule);
        assert_eq!(f32, [32, 33, 256, 257]);
        // A different rule moves the boundaries with it.
        let wide = DecodeRule { max_t: 128, ..rule };
        assert_eq!(route_boundaries(get(EntryId::Exact), &dims, optin, wide), [16, 17, 128, 129, 256, 257]);
        // The standard path is one norm kernel and one GEMM at every T.
        assert!(route_boundaries(get(EntryId::Standard), &dims, optin, rule).is_empty());
        assert_eq!(route(get(EntryId::MutantUlpBias), &dims.with_t(1), optin, rule), None);
    }
}
