//! The forward kernel's tile table, and the pure chooser the host runs against a device's shared-memory
//! budget. The same rows are the compile-time parameters of the instantiated kernels
//! (`fwd/kernels.rs` names each row), so the table exists once.
//!
//! Shared memory of one CTA: Q (`block_m` rows) plus `stages` buffers of K and V (`block_n` rows each),
//! every row padded by 16 bytes (`smem_row`), so the bytes are
//! `(block_m + 2·stages·block_n) · (head_dim + 8) · elem_bytes`.
//! Registers per thread grow with the accumulator of O (`head_dim/2` f32 per m16 row tile) plus the
//! score tile (`block_n/2` f32) and, when `q_in_regs`, the Q fragments (`head_dim/4` registers).

/// One compiled forward-kernel variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwdTile {
    /// Head dim of Q and K.
    pub head_dim: usize,
    /// Head dim of V and O: `head_dim`, or less in the rows for a value head dim of its own (192 / 128).
    pub head_dim_v: usize,
    /// Query rows per CTA: `warps · 16 · m_tiles`, each warp owning `16 · m_tiles` consecutive rows.
    pub block_m: usize,
    /// Keys per K/V block streamed through shared memory.
    pub block_n: usize,
    pub warps: usize,
    /// K/V shared-memory buffers (>= 2: block j+stages-1 loads while block j is computed).
    pub stages: usize,
    /// Q fragments loaded into registers once (true), or re-read from shared memory each block.
    pub q_in_regs: bool,
    /// CTAs per SM the row is designed for: what its registers allow (65536 / (threads · registers)).
    /// The chooser takes the row only where shared memory allows as many, else a later row.
    pub ctas_per_sm: usize,
    /// Kernel symbols: `[bf16, f16]`.
    pub symbols: [&'static str; 2],
    /// Symbols of the split-KV instantiation (`FwdParams::num_splits > 1`): `[bf16, f16]`. Separate
    /// kernels, so that the unsplit kernels stay exactly as they were (no run-time split branches).
    /// Empty for the `wgmma` rows, which have no split-KV kernel (the host splits with an `mma.sync` row).
    pub split_symbols: [&'static str; 2],
    /// Symbols of the instantiations for packed variable-length batches (`ScoreParams::cu_seqlens_q`),
    /// unsplit and split-KV (empty for the `wgmma` rows, as `split_symbols`): `[bf16, f16]`. Separate
    /// kernels, so that the dense ones keep their registers.
    pub packed_symbols: [&'static str; 2],
    pub packed_split_symbols: [&'static str; 2],
    /// Symbols of the instantiations over a paged KV cache (`abi::PageTable`), unsplit and split-KV:
    /// `[bf16, f16]`. The `mma.sync` rows but `HD128_N32` have both, for any page size; the TMA rows an
    /// unsplit one, for the page sizes [`FwdTile::paged_box_rows`] accepts; the other `wgmma` rows none.
    pub paged_symbols: [&'static str; 2],
    pub paged_split_symbols: [&'static str; 2],
    /// Symbols of the persistent instantiations (`[bf16, f16]`; the TMA rows, dense and unsplit, empty
    /// elsewhere): a one-dimensional grid of any size, each CTA taking tile after tile, so that a tile's
    /// first loads run under the previous tile's products (`fwd::hopper`'s `Tiles`). Separate kernels,
    /// so that calls of one wave keep the one-tile kernels, which a tile loop slows (docs/perf.md).
    pub persistent_symbols: [&'static str; 2],
    /// Symbols of the persistent instantiations that take their tiles by atomic ticket
    /// (`fwd::schedule`; `[bf16, f16]`, where `persistent_symbols` are): for the calls whose tiles static
    /// rounds do not balance (windows, fewer keys than queries, odd causal query-block counts). Separate
    /// kernels, so that the rounds' ones keep their walk free of the hand-over (docs/perf.md).
    pub ticket_symbols: [&'static str; 2],
    /// A Hopper row (`fwd/hopper.rs`, sm_90a PTX only: `wgmma`, warp-specialised K/V loads, 128-byte
    /// swizzled shared memory); chosen only on compute capability 9.0.
    pub wgmma: bool,
    /// Hopper rows: the two compute warpgroups take turns issuing their products (ping-pong), so that
    /// one's softmax runs while the other's products hold the tensor cores.
    pub pingpong: bool,
    /// Hopper rows: of the `block_n / 8` n8 tiles of each score row, how many take their exponentials on
    /// the FMA pipe (a polynomial) instead of the MUFU unit, which the softmax's `ex2` (and a softcap's
    /// `tanh`) share; 0 elsewhere. Worth it only where a score carries few FLOPs of products (head dim
    /// 32; measured to cost from 64 up: docs/perf.md).
    pub fma_exp2_tiles: usize,
    /// Hopper rows: Q, K and V come by TMA (`cp.async.bulk.tensor`, one instruction per 64-column box,
    /// completion counted in bytes on an `mbarrier` per stage; the kernel takes `abi::FwdTensorMaps` as a
    /// second parameter) instead of the loader warpgroup's `cp.async`; dense and packed batches (not
    /// paged caches), head dims that are multiples of 64.
    pub tma: bool,
}

/// A persistent CTA's place in its static rounds over a call's tiles (`fwd::schedule`, where the host
/// chooses rounds rather than tickets; its choice of CTA count relies on the order): of `grid` CTAs,
/// CTA c takes tile c in round 0, tile `2·grid − 1 − c` in round 1, `2·grid + c` in round 2, ..., the
/// rounds alternately forward and backward over the CTAs, so that where tile lengths fall with the index (causal rows, the longest
/// query blocks of a head first) a CTA that took a long tile in one round takes a short one in the next.
/// Tile `i` now, then `i + step`, then `i + step + next_step`, the two steps alternating. Once `i` is
/// past the last tile no later round has a tile for the CTA either (each round's tiles lie above the
/// previous round's), so the CTA stops there: no division and one compare a tile.
#[derive(Clone, Copy, Debug)]
pub struct Rounds {
    pub i: u32,
    pub step: u32,
    pub next_step: u32,
}

impl Rounds {
    /// CTA `c`'s first tile of `grid` CTAs' rounds (`c < grid`).
    #[inline(always)]
    pub const fn first(c: u32, grid: u32) -> Rounds {
        Rounds { i: c, step: 2 * (grid - c) - 1, next_step: 2 * c + 1 }
    }

    /// On to the CTA's tile of the next round.
    #[inline(always)]
    pub fn advance(&mut self) {
        self.i += self.step;
        core::mem::swap(&mut self.step, &mut self.next_step);
    }
}

/// Tile `i` of a persistent forward's order (`fwd::schedule`) over `m_blocks` query blocks of `heads`
/// (batch, query head) pairs: `(m_block, pair)`. The pairs go in sections of `section` (the last may be
/// shorter), each section's tiles longest first: its highest query block of every pair, then the next
/// lower, and so on; pairs of one K/V head and batch row lie next to each other. A section's K and V fit
/// the L2 cache (`gpu::flash` sizes it), and the tiles a CTA takes by ticket end with a section's
/// shortest ones, which balances causal rows: the longest tiles of a section go out first (the greedy
/// order's longest-processing-time rule). `section >= 1`; every argument non-zero where `i` is a tile.
#[inline(always)]
pub const fn persistent_tile(i: u32, m_blocks: u32, heads: u32, section: u32) -> (u32, u32) {
    if section == 1 {
        // Each pair's query blocks in a row: two divisions rather than four.
        return (m_blocks - 1 - i % m_blocks, i / m_blocks);
    }
    let section_tiles = section * m_blocks;
    let first = i / section_tiles * section;
    let within = i % section_tiles;
    let in_section = if heads - first < section { heads - first } else { section };
    (m_blocks - 1 - within / in_section, first + within % in_section)
}

/// Bytes of the TMA rows' `mbarrier`s after the stages: Q's and one per stage (at most four), 8 each,
/// then a persistent CTA's tile queue (`fwd::schedule`).
pub const TMA_BARRIER_BYTES: usize = 128;

/// How a call's batch lies in memory, which selects a row's kernel (`FwdTile::kernel_symbol`): dense
/// `[batch, seqlen, heads, head_dim]` tensors, a packed variable-length batch (`ScoreParams::cu_seqlens_q`),
/// or K/V in a paged cache (`abi::PageTable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchLayout {
    Dense,
    Packed,
    Paged,
}

/// Shared memory the driver reserves per resident CTA on sm_80 and newer (CUDA programming guide,
/// "Shared Memory" for compute capability 8.x/9.0): 1 KiB, counted against the per-SM capacity.
pub const SMEM_RESERVED_PER_CTA: usize = 1024;

/// Whether a CTA using `bytes` of dynamic shared memory can launch at all: within the per-block opt-in
/// limit, and with the driver's reservation, within one SM's capacity. Forward and backward tiles alike.
pub const fn fits_smem(bytes: usize, smem_per_block_optin: usize, smem_per_sm: usize) -> bool {
    bytes <= smem_per_block_optin && bytes + SMEM_RESERVED_PER_CTA <= smem_per_sm
}

impl FwdTile {
    pub const fn threads(&self) -> usize {
        self.warps * 32
    }
    /// m16 row tiles per warp.
    pub const fn m_tiles(&self) -> usize {
        self.block_m / (16 * self.warps)
    }
    /// Elements per shared-memory row: 8 elements (16 bytes) of padding move consecutive rows 4 banks
    /// apart, so the 8 rows of one ldmatrix 8x8 matrix fall in 8 different 16-byte bank groups
    /// (conflict-free for every head dim in the table: 2·head_dim + 16 ≡ 16 or 80 mod 128 bytes).
    pub const fn smem_row(&self) -> usize {
        self.head_dim + 8
    }
    /// Elements per shared-memory row of a V tile (padded as `smem_row`).
    pub const fn smem_row_v(&self) -> usize {
        self.head_dim_v + 8
    }
    /// Dynamic shared memory of one CTA, in bytes.
    pub const fn smem_bytes(&self, elem_bytes: usize) -> usize {
        if self.wgmma {
            return self.wgmma_smem_layout(elem_bytes)[2] + if self.tma { TMA_BARRIER_BYTES } else { 0 } + 1024;
        }
        (self.block_m * self.smem_row() + self.stages * self.block_n * (self.smem_row() + self.smem_row_v()))
            * elem_bytes
    }
    /// Byte offsets of the Hopper kernel's shared memory from its 1024-byte aligned base:
    /// `[q, kv (stages x (K, V)), end]`; swizzled tiles of whole 64-column blocks (`ptx::wgmma`), so
    /// head dims 32 and 96 take the room of 64 and 128. The size adds 1024 bytes of slack for the
    /// alignment.
    pub const fn wgmma_smem_layout(&self, elem_bytes: usize) -> [usize; 3] {
        let (stored, stored_v) = (swizzled_cols(self.head_dim), swizzled_cols(self.head_dim_v));
        let q = 0;
        let kv = q + self.block_m * stored * elem_bytes;
        [q, kv, kv + self.stages * self.block_n * (stored + stored_v) * elem_bytes]
    }
    /// CTAs that fit in one SM's shared memory.
    pub const fn ctas_per_sm_by_smem(&self, elem_bytes: usize, smem_per_sm: usize) -> usize {
        smem_per_sm / (self.smem_bytes(elem_bytes) + SMEM_RESERVED_PER_CTA)
    }
    /// The symbol for an element size class (bf16 = 0, f16 = 1).
    pub const fn symbol(&self, f16: bool) -> &'static str {
        self.symbols[f16 as usize]
    }
    /// The split-KV kernel's symbol for an element size class (bf16 = 0, f16 = 1).
    pub const fn split_symbol(&self, f16: bool) -> &'static str {
        self.split_symbols[f16 as usize]
    }
    /// The symbol of the kernel for a launch: element size class (bf16 = 0, f16 = 1), split-KV or not,
    /// and the batch's layout; empty where the row has no such kernel.
    pub const fn kernel_symbol(&self, f16: bool, split: bool, batch: BatchLayout) -> &'static str {
        let names = match (split, batch) {
            (false, BatchLayout::Dense) => &self.symbols,
            (true, BatchLayout::Dense) => &self.split_symbols,
            (false, BatchLayout::Packed) => &self.packed_symbols,
            (true, BatchLayout::Packed) => &self.packed_split_symbols,
            (false, BatchLayout::Paged) => &self.paged_symbols,
            (true, BatchLayout::Paged) => &self.paged_split_symbols,
        };
        names[f16 as usize]
    }
    /// Whether the row has a persistent kernel for a launch (`persistent_symbols`: dense, unsplit).
    pub const fn persistent(&self, split: bool, batch: BatchLayout) -> bool {
        !self.persistent_symbols[0].is_empty() && !split && matches!(batch, BatchLayout::Dense)
    }
    /// Whether a paged call with pages of `page_size` keys can run this row's paged kernel, and how: `Some(0)`
    /// for the `mma.sync` rows (a block-table read per key row, any page size); for the TMA rows
    /// `Some(rows)`, the keys of each TMA box, `gcd(page_size, block_n)`, where that is a multiple of 8
    /// (a box then stays inside one page and fills whole 8-row groups of the 128-byte swizzle); `None`
    /// where the row has no paged kernel or cannot take that page size.
    pub const fn paged_box_rows(&self, page_size: usize) -> Option<usize> {
        if self.paged_symbols[0].is_empty() || page_size == 0 {
            return None;
        }
        if !self.tma {
            return Some(0);
        }
        let (mut a, mut b) = (page_size, self.block_n);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        if a.is_multiple_of(8) {
            Some(a)
        } else {
            None
        }
    }
    /// Whether the row is well formed (checked at compile time for every instantiated kernel).
    pub const fn is_valid(&self) -> bool {
        let (d, dv) = (self.head_dim, self.head_dim_v);
        // O is staged in the Q tile's rows on its way out: V's head dim may not exceed Q's.
        if dv > d || !dv.is_multiple_of(32) {
            return false;
        }
        if self.wgmma {
            // The shapes `fwd/hopper.rs` implements: two compute warpgroups of 64 rows, one loader, 64-column
            // blocks of the 128-byte swizzle, an S product (m64n64..m64n128) and a P·V product
            // (m64n`d`) that `ptx::wgmma` has. Ping-pong needs two more named barriers: FULL (2 per
            // stage), EMPTY (1 per stage), 2.
            return matches!(d, 32 | 64 | 96 | 128 | 192 | 256)
                && matches!(dv, 32 | 64 | 96 | 128 | 192 | 256)
                && self.block_m == 128
                && self.block_n.is_multiple_of(16)
                && self.block_n >= 64
                && self.block_n <= 128
                && self.warps == 12
                && self.stages >= 2
                && self.stages <= 4
                && 1 + 3 * self.stages + 2 * self.pingpong as usize <= 16
                && self.fma_exp2_tiles <= self.block_n / 8
                // TMA boxes of 64 columns (128 bytes, the swizzle's span) and at most 256 rows.
                && (!self.tma || (d.is_multiple_of(64) && dv.is_multiple_of(64)));
        }
        self.fma_exp2_tiles == 0
            && !self.tma
            && d.is_multiple_of(32)
            && (self.warps == 4 || self.warps == 8)
            && self.block_m.is_multiple_of(16 * self.warps)
            && self.m_tiles() >= 1
            && self.block_n.is_multiple_of(16)
            && self.block_n >= 16
            && self.stages >= 2
            // cp.async work divides evenly among the threads (no partial last round).
            && (self.block_m * d / 8).is_multiple_of(self.threads())
            && (self.block_n * d / 8).is_multiple_of(self.threads())
            && (self.block_n * dv / 8).is_multiple_of(self.threads())
    }
}

macro_rules! tile {
    ($d:literal, $m:literal, $n:literal, $w:literal, $s:literal, $qreg:literal, $ctas:literal) => {
        tile!($d, $d, concat!("hd", $d), $m, $n, $w, $s, $qreg, $ctas)
    };
    ($d:literal, $dv:literal, $dims:expr, $m:literal, $n:literal, $w:literal, $s:literal, $qreg:literal, $ctas:literal) => {
        FwdTile {
            head_dim: $d,
            head_dim_v: $dv,
            block_m: $m,
            block_n: $n,
            warps: $w,
            stages: $s,
            q_in_regs: $qreg,
            ctas_per_sm: $ctas,
            symbols: [
                concat!("attn_fwd_", $dims, "_m", $m, "n", $n, "w", $w, "_bf16"),
                concat!("attn_fwd_", $dims, "_m", $m, "n", $n, "w", $w, "_f16"),
            ],
            split_symbols: [
                concat!("attn_fwd_split_", $dims, "_m", $m, "n", $n, "w", $w, "_bf16"),
                concat!("attn_fwd_split_", $dims, "_m", $m, "n", $n, "w", $w, "_f16"),
            ],
            packed_symbols: [
                concat!("attn_fwd_varlen_", $dims, "_m", $m, "n", $n, "w", $w, "_bf16"),
                concat!("attn_fwd_varlen_", $dims, "_m", $m, "n", $n, "w", $w, "_f16"),
            ],
            packed_split_symbols: [
                concat!("attn_fwd_varlen_split_", $dims, "_m", $m, "n", $n, "w", $w, "_bf16"),
                concat!("attn_fwd_varlen_split_", $dims, "_m", $m, "n", $n, "w", $w, "_f16"),
            ],
            paged_symbols: [
                concat!("attn_fwd_paged_", $dims, "_m", $m, "n", $n, "w", $w, "_bf16"),
                concat!("attn_fwd_paged_", $dims, "_m", $m, "n", $n, "w", $w, "_f16"),
            ],
            paged_split_symbols: [
                concat!("attn_fwd_paged_split_", $dims, "_m", $m, "n", $n, "w", $w, "_bf16"),
                concat!("attn_fwd_paged_split_", $dims, "_m", $m, "n", $n, "w", $w, "_f16"),
            ],
            persistent_symbols: ["", ""],
            ticket_symbols: ["", ""],
            wgmma: false,
            pingpong: false,
            fma_exp2_tiles: 0,
            tma: false,
        }
    };
}

// The rows, named so that `fwd/kernels.rs` instantiates exactly these, in order of preference within a
// head dim (see `choose_fwd`). Measured on an H100 (docs/perf.md, "Fused forward (sm80 path)"): 4 warps
// of 32 rows (two m16 tiles, so every K/V fragment read from shared memory feeds two mma) beat 8 warps
// of 16 rows wherever the registers allow, since shared-memory bandwidth binds the mma.sync loop.
// Each comment names the limit that binds the row.

/// 30 KiB. Registers (~180) bind: two 4-warp CTAs per SM.
pub const HD32: FwdTile = tile!(32, 128, 64, 4, 2, true, 2);
/// 55 KiB. Registers (~250: O 64 + S 64 + Q 32 per thread) bind: two CTAs per SM.
pub const HD64: FwdTile = tile!(64, 128, 64, 4, 2, true, 2);
/// 45 KiB, for 48 KiB devices: half the query rows of `HD64`.
pub const HD64_SMALL: FwdTile = tile!(64, 64, 64, 4, 2, true, 3);
/// 53 KiB. Registers bind (O 96 + S 32; 64-key blocks spill): two CTAs per SM.
pub const HD96: FwdTile = tile!(96, 128, 32, 4, 2, false, 2);
/// 39 KiB, for 48 KiB devices.
pub const HD96_SMALL: FwdTile = tile!(96, 64, 32, 4, 2, true, 3);
/// 85 KiB: 64 query rows (one m16 tile per warp; O 64 + S 32 + Q 32 registers) and 64-key blocks,
/// two CTAs per SM by smem on H100, where compute capability 9.0 runs it only split (decode: few query
/// rows). The 128-row variant (two m16 tiles per warp) sat at the 255-register limit, which the score
/// stage's modifiers (softcap, ALiBi, windows) pushed into spills.
pub const HD128: FwdTile = tile!(128, 64, 64, 4, 2, true, 2);
/// 68 KiB: where two `HD128` CTAs do not fit one SM (A100: 164 KiB), 32-key blocks keep two CTAs.
pub const HD128_N32: FwdTile =
    FwdTile { paged_symbols: ["", ""], paged_split_symbols: ["", ""], ..tile!(128, 128, 32, 4, 2, false, 2) };
/// 34 KiB, for 48 KiB devices (64-key blocks need 102 KiB, 32-key blocks 51 KiB).
pub const HD128_SMALL: FwdTile = tile!(128, 64, 16, 4, 2, true, 3);
/// 150 KiB. Smem binds: one 8-warp CTA per SM (A100 and H100); 8 warps of 16 rows, since O (96 per
/// m16 tile) leaves no room for two m16 tiles per warp.
pub const HD192: FwdTile = tile!(192, 128, 64, 8, 2, false, 1);
/// 75 KiB, for ~100 KiB devices (sm_86/sm_89: 99 KiB per block).
pub const HD192_SMALL: FwdTile = tile!(192, 64, 32, 4, 2, false, 2);
/// 99 KiB. Registers bind (O alone is 128 per thread): 32-key blocks, Q from smem, two CTAs per SM on
/// H100.
pub const HD256: FwdTile = tile!(256, 64, 32, 4, 2, false, 2);
/// 132 KiB: where two `HD256` CTAs do not fit (A100), one CTA of 8 warps instead of 4.
pub const HD256_W8: FwdTile = tile!(256, 128, 32, 8, 2, false, 1);

// Q and K of head dim 192, V and O of 128 (DeepSeek-V3): the `HD192` rows with narrower V tiles and
// O accumulators.

/// 134 KiB: `HD192`'s grid (O is 64 per m16 tile; Q from smem as there).
pub const HD192_V128: FwdTile = tile!(192, 128, "hd192v128", 128, 64, 8, 2, false, 1);
/// 67 KiB, for ~100 KiB devices.
pub const HD192_V128_SMALL: FwdTile = tile!(192, 128, "hd192v128", 64, 32, 4, 2, false, 2);

macro_rules! wgmma_tile {
    ($d:literal, $n:literal, $s:literal, $pingpong:literal) => {
        wgmma_tile!($d, $d, concat!("hd", $d), $n, $s, $pingpong)
    };
    ($d:literal, $dv:literal, $dims:expr, $n:literal, $s:literal, $pingpong:literal) => {
        FwdTile {
            head_dim: $d,
            head_dim_v: $dv,
            block_m: 128,
            block_n: $n,
            warps: 12,
            stages: $s,
            q_in_regs: false,
            ctas_per_sm: 1,
            symbols: [
                concat!("attn_fwd_", $dims, "_m128n", $n, "_wgmma_bf16"),
                concat!("attn_fwd_", $dims, "_m128n", $n, "_wgmma_f16"),
            ],
            split_symbols: ["", ""],
            packed_symbols: [
                concat!("attn_fwd_varlen_", $dims, "_m128n", $n, "_wgmma_bf16"),
                concat!("attn_fwd_varlen_", $dims, "_m128n", $n, "_wgmma_f16"),
            ],
            packed_split_symbols: ["", ""],
            paged_symbols: ["", ""],
            paged_split_symbols: ["", ""],
            persistent_symbols: ["", ""],
            ticket_symbols: ["", ""],
            wgmma: true,
            pingpong: $pingpong,
            fma_exp2_tiles: 0,
            tma: false,
        }
    };
}

// Hopper rows (compute capability 9.0 only, `fwd/hopper.rs`): one CTA of 12 warps per SM, two compute
// warpgroups of 64 query rows (`wgmma`) and a loader warpgroup; as many key rows per block and stages
// as the 227 KiB of shared memory and the compute warpgroups' registers (O: head_dim/2, S: block_n/2,
// P: block_n/4; 224 per thread with a `cp.async` loader, 240 with a TMA one) allow.

/// 145 KiB (stored as head dim 64): 128-key blocks in four stages, ping-pong; a quarter of the
/// exponentials on the FMA pipe (a score's products are 128 FLOPs against one `ex2`): +1-9% plain,
/// +2-4% softcapped on an H100.
pub const HD32_WGMMA: FwdTile = FwdTile { fma_exp2_tiles: 4, ..wgmma_tile!(32, 128, 4, true) };
/// 145 KiB: 128-key blocks in four stages (three blocks of copies in flight), ping-pong. With an
/// eighth of the exponentials on the FMA pipe the softcap gained 1-10% and plain lost up to 5% (H100):
/// all on the MUFU unit.
pub const HD64_WGMMA: FwdTile = wgmma_tile!(64, 128, 4, true);
/// `HD64_WGMMA` with TMA loads: one tile per CTA 1-7% slower on an H100 (its short stages gain less than
/// the hand-over through the loader costs per block), so after it; but taken where a dense call launches
/// its persistent kernel (`gpu::flash::persistent_tile`), which leads `HD64_WGMMA` by up to 11% at 1K
/// on an H200.
pub const HD64_WGMMA_TMA: FwdTile = tma_row(
    HD64_WGMMA,
    ["attn_fwd_hd64_m128n128_wgmma_tma_bf16", "attn_fwd_hd64_m128n128_wgmma_tma_f16"],
    ["attn_fwd_varlen_hd64_m128n128_wgmma_tma_bf16", "attn_fwd_varlen_hd64_m128n128_wgmma_tma_f16"],
    ["attn_fwd_paged_hd64_m128n128_wgmma_tma_bf16", "attn_fwd_paged_hd64_m128n128_wgmma_tma_f16"],
    ["attn_fwd_persist_hd64_m128n128_wgmma_tma_bf16", "attn_fwd_persist_hd64_m128n128_wgmma_tma_f16"],
    ["attn_fwd_tickets_hd64_m128n128_wgmma_tma_bf16", "attn_fwd_tickets_hd64_m128n128_wgmma_tma_f16"],
);
/// 225 KiB (stored as head dim 128): 128-key blocks in three stages, ping-pong.
pub const HD96_WGMMA: FwdTile = wgmma_tile!(96, 128, 3, true);
/// 225 KiB: 128-key blocks in three stages, ping-pong.
pub const HD128_WGMMA: FwdTile = wgmma_tile!(128, 128, 3, true);
/// `HD128_WGMMA` with its Q, K and V loads by TMA, first: +2% at 1K, +6-9% at 4K, +1-6% at 8K against
/// it on an H100 (dense batches; docs/perf.md).
pub const HD128_WGMMA_TMA: FwdTile = tma_row(
    HD128_WGMMA,
    ["attn_fwd_hd128_m128n128_wgmma_tma_bf16", "attn_fwd_hd128_m128n128_wgmma_tma_f16"],
    ["attn_fwd_varlen_hd128_m128n128_wgmma_tma_bf16", "attn_fwd_varlen_hd128_m128n128_wgmma_tma_f16"],
    ["attn_fwd_paged_hd128_m128n128_wgmma_tma_bf16", "attn_fwd_paged_hd128_m128n128_wgmma_tma_f16"],
    ["attn_fwd_persist_hd128_m128n128_wgmma_tma_bf16", "attn_fwd_persist_hd128_m128n128_wgmma_tma_f16"],
    ["attn_fwd_tickets_hd128_m128n128_wgmma_tma_bf16", "attn_fwd_tickets_hd128_m128n128_wgmma_tma_f16"],
);

/// A Hopper row with its loads by TMA (`FwdTile::tma`): its dense kernels' names, then its packed ones',
/// its paged ones' (unsplit: the host splits with an `mma.sync` row), its persistent ones' in rounds and by
/// ticket.
const fn tma_row(
    row: FwdTile,
    symbols: [&'static str; 2],
    packed_symbols: [&'static str; 2],
    paged_symbols: [&'static str; 2],
    persistent_symbols: [&'static str; 2],
    ticket_symbols: [&'static str; 2],
) -> FwdTile {
    FwdTile { tma: true, symbols, packed_symbols, paged_symbols, persistent_symbols, ticket_symbols, ..row }
}
/// 193 KiB: 96-key blocks in two stages (O 96 + S 48 + P 24 registers), ping-pong.
pub const HD192_WGMMA: FwdTile = wgmma_tile!(192, 96, 2, true);
/// `HD192_WGMMA` with TMA loads, first: +0-2% at 1K, +3-6% at 4K on an H100.
pub const HD192_WGMMA_TMA: FwdTile = tma_row(
    HD192_WGMMA,
    ["attn_fwd_hd192_m128n96_wgmma_tma_bf16", "attn_fwd_hd192_m128n96_wgmma_tma_f16"],
    ["attn_fwd_varlen_hd192_m128n96_wgmma_tma_bf16", "attn_fwd_varlen_hd192_m128n96_wgmma_tma_f16"],
    ["attn_fwd_paged_hd192_m128n96_wgmma_tma_bf16", "attn_fwd_paged_hd192_m128n96_wgmma_tma_f16"],
    ["attn_fwd_persist_hd192_m128n96_wgmma_tma_bf16", "attn_fwd_persist_hd192_m128n96_wgmma_tma_f16"],
    ["attn_fwd_tickets_hd192_m128n96_wgmma_tma_bf16", "attn_fwd_tickets_hd192_m128n96_wgmma_tma_f16"],
);
/// 193 KiB: 64-key blocks in two stages (O alone is 128 registers). Without ping-pong: with it, 4-6%
/// slower non-causal and -2..+2% causal on an H200 (measured without spills; each block's softmax is
/// short against its products here, so taking turns only adds waits).
pub const HD256_WGMMA: FwdTile = wgmma_tile!(256, 64, 2, false);
/// `HD256_WGMMA` with TMA loads, first, and two changes the TMA loader's 24 registers make room for
/// (the compute warpgroups get 240, `fwd::hopper`): ping-pong, and 80-key blocks (FlashAttention-3's:
/// O 128 + S 40 + P 20 registers; 225 KiB). Against `HD256_WGMMA`'s shape with TMA loads on an H200:
/// ping-pong alone +3% at 1K, +8-11% from 4K non-causal, +2-8% causal; with 80-key blocks +7-11% at
/// 1K, +17-19% from 4K non-causal, +10-15% from 4K causal (docs/perf.md).
pub const HD256_WGMMA_TMA: FwdTile = tma_row(
    FwdTile { block_n: 80, pingpong: true, ..HD256_WGMMA },
    ["attn_fwd_hd256_m128n80_wgmma_tma_bf16", "attn_fwd_hd256_m128n80_wgmma_tma_f16"],
    ["attn_fwd_varlen_hd256_m128n80_wgmma_tma_bf16", "attn_fwd_varlen_hd256_m128n80_wgmma_tma_f16"],
    ["attn_fwd_paged_hd256_m128n80_wgmma_tma_bf16", "attn_fwd_paged_hd256_m128n80_wgmma_tma_f16"],
    ["attn_fwd_persist_hd256_m128n80_wgmma_tma_bf16", "attn_fwd_persist_hd256_m128n80_wgmma_tma_f16"],
    ["attn_fwd_tickets_hd256_m128n80_wgmma_tma_bf16", "attn_fwd_tickets_hd256_m128n80_wgmma_tma_f16"],
);
/// 209 KiB: Q and K of head dim 192, V of 128; 128-key blocks in two stages (O 64 + S 64 + P 32
/// registers, D = 128's), ping-pong. Measured against 96 x 2, 80 x 3 and 112 x 2 (docs/perf.md):
/// fastest from 4K; 80 x 3 was 5-7% faster at 1K and up to 14% slower at 8K causal.
pub const HD192_V128_WGMMA: FwdTile = wgmma_tile!(192, 128, "hd192v128", 128, 2, true);

/// Every compiled variant, in order of preference within a head dim.
pub const FWD_TILES: &[FwdTile] = &[
    HD32_WGMMA,
    HD32,
    HD64_WGMMA,
    HD64_WGMMA_TMA,
    HD64,
    HD64_SMALL,
    HD96_WGMMA,
    HD96,
    HD96_SMALL,
    HD128_WGMMA_TMA,
    HD128_WGMMA,
    HD128,
    HD128_N32,
    HD128_SMALL,
    HD192_WGMMA_TMA,
    HD192_WGMMA,
    HD192,
    HD192_SMALL,
    HD256_WGMMA_TMA,
    HD256_WGMMA,
    HD256,
    HD256_W8,
    HD192_V128_WGMMA,
    HD192_V128,
    HD192_V128_SMALL,
];

/// The forward tile for a problem on a device: the first row for `head_dim` and `head_dim_v` (in table order) whose
/// designed CTAs per SM (`ctas_per_sm`) fit the SM's shared memory, each within the per-block opt-in
/// limit; failing that, the first row of which one CTA fits. `None` when no compiled row fits (the host
/// turns that into `Error::NoTileConfig`).
///
/// `causal` is accepted so that the choice can depend on it; at present every row serves both (the
/// kernels take causality as a run-time flag and skip the blocks above the diagonal, and the same rows
/// measured fastest causal and not). `wgmma` rows are considered only where `sm90a` (compute
/// capability 9.0: the sm_90a PTX).
pub fn choose_fwd(
    head_dim: usize,
    head_dim_v: usize,
    elem_bytes: usize,
    causal: bool,
    smem_per_block_optin: usize,
    smem_per_sm: usize,
    sm90a: bool,
) -> Option<&'static FwdTile> {
    let _ = causal;
    choose_fwd_among(head_dim, head_dim_v, elem_bytes, smem_per_block_optin, smem_per_sm, |t| sm90a || !t.wgmma)
}

/// As [`choose_fwd`] among the rows `accept` takes (a paged-cache call: the rows with paged kernels).
pub fn choose_fwd_among(
    head_dim: usize,
    head_dim_v: usize,
    elem_bytes: usize,
    smem_per_block_optin: usize,
    smem_per_sm: usize,
    accept: impl Fn(&FwdTile) -> bool,
) -> Option<&'static FwdTile> {
    if elem_bytes != 2 {
        return None;
    }
    let rows = || {
        FWD_TILES.iter().filter(|t| {
            t.head_dim == head_dim
                && t.head_dim_v == head_dim_v
                && accept(t)
                && t.smem_bytes(elem_bytes) <= smem_per_block_optin
        })
    };
    rows()
        .find(|t| t.ctas_per_sm_by_smem(elem_bytes, smem_per_sm) >= t.ctas_per_sm)
        .or_else(|| rows().find(|t| t.ctas_per_sm_by_smem(elem_bytes, smem_per_sm) >= 1))
}

/// One compiled FP8 (e4m3) forward kernel (`fwd/hopper_fp8.rs`, sm_90a only): `hopper.rs`'s shape (two
/// compute warpgroups of 64 query rows, a TMA loader warpgroup, 384 threads, one CTA per SM) with
/// one-byte Q, K and V and a transposed copy of V per stage. O is bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fp8FwdTile {
    /// Head dim of Q and K, and of V and O.
    pub head_dim: usize,
    pub head_dim_v: usize,
    pub block_n: usize,
    pub stages: usize,
    pub pingpong: bool,
    /// Of the `block_n / 8` n8 tiles of each score row, how many take their exponentials on the FMA
    /// pipe (as `FwdTile::fma_exp2_tiles`).
    pub fma_exp2_tiles: usize,
    /// P is rounded to e4m3 as `P · 2^p_log2`; below 8 the softmax rescales lazily, letting the max go
    /// stale by up to `8 - p_log2` (base 2), so that P · 2^p_log2 stays within 2^8 (e4m3 holds 448).
    pub p_log2: u32,
    /// FlashAttention-3's intra-warpgroup overlap: S of block j issued with P·V of block j-1, block j's
    /// softmax while that P·V runs, O rescaled once it has landed.
    pub overlap: bool,
    /// The kernel's symbols, O in bf16 and in f16, and its split-KV variant's (partial results in f32
    /// to the workspace, `abi::FwdParams`; the combine rounds them to O's type).
    pub symbols: [&'static str; 2],
    pub split_symbol: &'static str,
    /// The persistent kernels' (O in bf16, f16): a one-dimensional grid whose CTAs take the call's tiles
    /// in rounds (`tiles::Rounds`), as the 16-bit TMA rows' `persistent_symbols`.
    pub persistent_symbols: [&'static str; 2],
    /// The ticket-taking persistent kernels' (`FwdTile::ticket_symbols`).
    pub ticket_symbols: [&'static str; 2],
    /// Whether a persistent grid takes tiles that all see the same keys in rounds (else by ticket, as
    /// every other persistent call): measured per row (below).
    pub equal_tiles_in_rounds: bool,
}

impl Fp8FwdTile {
    pub const BLOCK_M: usize = 128;
    /// The unsplit kernel's symbol for O in f16 (`f16`) or bf16.
    pub const fn symbol(&self, f16: bool) -> &'static str {
        self.symbols[f16 as usize]
    }
    pub const THREADS: usize = 384;
    /// Dynamic shared memory: Q, then per stage K, V as loaded and Vᵀ (one byte per element), the TMA
    /// barriers, and 1024 bytes of slack for the swizzle's alignment.
    pub const fn smem_bytes(&self) -> usize {
        Self::BLOCK_M * self.head_dim
            + self.stages * self.block_n * (self.head_dim + 2 * self.head_dim_v)
            + TMA_BARRIER_BYTES
            + 1024
    }
    /// Whether the row is one `fwd/hopper_fp8.rs` implements (checked at compile time for each kernel).
    pub const fn is_valid(&self) -> bool {
        matches!(self.head_dim, 64 | 128 | 256)
            && self.head_dim_v == self.head_dim
            && matches!(self.block_n, 64 | 128)
            && self.stages >= 2
            && self.stages <= 4
            && self.fma_exp2_tiles <= self.block_n / 8
            && self.p_log2 <= 8
    }
}

macro_rules! fp8_tile {
    ($d:literal, $n:literal, $stages:literal, $pingpong:literal, $fma:literal, $p:literal, $overlap:literal, $rounds:literal, $name:literal) => {
        Fp8FwdTile {
            head_dim: $d,
            head_dim_v: $d,
            block_n: $n,
            stages: $stages,
            pingpong: $pingpong,
            fma_exp2_tiles: $fma,
            p_log2: $p,
            overlap: $overlap,
            symbols: [concat!("attn_fwd_fp8_", $name, "_bf16"), concat!("attn_fwd_fp8_", $name, "_f16")],
            split_symbol: concat!("attn_fwd_fp8_split_", $name),
            persistent_symbols: [
                concat!("attn_fwd_fp8_persist_", $name, "_bf16"),
                concat!("attn_fwd_fp8_persist_", $name, "_f16"),
            ],
            ticket_symbols: [
                concat!("attn_fwd_fp8_tickets_", $name, "_bf16"),
                concat!("attn_fwd_fp8_tickets_", $name, "_f16"),
            ],
            equal_tiles_in_rounds: $rounds,
        }
    };
}

// Measured on an H100 (docs/perf.md, "FP8 (e4m3) forward"), TFLOP/s at 16K non-causal unless stated:
// at head dim 128 four stages 762-827 against three 751-795 and two 656-759; an eighth or a quarter of
// the exponentials on the FMA pipe 757-800 (no gain: the MUFU unit does not bind); at head dim 256
// ping-pong 755-761 causal against 731-778 without (level non-causal). A lazy rescale with P scaled by
// 2^6 (head dim 128) or 2^4 (256) against 2^8 rescaled every block: +7% (844 against 787) and +9%
// (887-897 against 820-824), causal +6-11% and +9-24%, for a little more error where a row's
// probabilities spread far below its largest (docs/perf.md). The intra-warpgroup overlap: head dim 64
// 520-527 against 464-469 (+8-14% from 1K), then 2 of 16 tiles' exponentials on the FMA pipe 523-541
// against 472-523 (4 tiles: 510-518); head dim 128 761-788 against 799-854, 256 698-713 against
// 877-910: off there. Persistent grids (H200, docs/perf.md "A persistent FP8 forward"), non-causal
// at 4K / 8K / 16K, rounds against tickets on 132 CTAs: head dim 64 520-521 / 536-537 / 545 against
// 523-524 / 540 / 548-549 (level; rounds ahead at 1K, 436 against 430), 128 724-725 / 752-767 / 794-799
// against 747-760 / 799-813 / 805-821, 256 828-843 / 862-874 / 868-883 against 796 / 841-842 /
// 869-875: `equal_tiles_in_rounds` at 64 and 256.

/// 105 KiB: 128-key blocks in four stages, ping-pong (64-byte rows: the 64-byte swizzle); the
/// intra-warpgroup overlap, and 2 of each row's 16 n8 tiles' exponentials on the FMA pipe (the
/// softmax is the longer part of a turn here: products half as long as at head dim 128).
pub const HD64_FP8: Fp8FwdTile = fp8_tile!(64, 128, 4, true, 2, 8, true, true, "hd64_m128n128");
/// 209 KiB: 128-key blocks in four stages, ping-pong (`HD128_WGMMA`'s shape, one more stage); P scaled
/// by 2^6, the max left stale by up to 2^2.
pub const HD128_FP8: Fp8FwdTile = fp8_tile!(128, 128, 4, true, 0, 6, false, false, "hd128_m128n128");
/// 177 KiB: 64-key blocks in three stages (O alone is 128 registers: with 128-key blocks ptxas
/// serialises the products), ping-pong; P scaled by 2^4, the max left stale by up to 2^4.
pub const HD256_FP8: Fp8FwdTile = fp8_tile!(256, 64, 3, true, 0, 4, false, true, "hd256_m128n64");

/// Every compiled FP8 forward variant, in order of preference within a head dim.
pub const FP8_FWD_TILES: &[Fp8FwdTile] = &[HD64_FP8, HD128_FP8, HD256_FP8];

/// The FP8 forward tile for a head dim on a device: the first row for it whose shared memory fits one
/// CTA per SM within the per-block opt-in limit, on compute capability 9.0 only (`sm90a`); `None`
/// otherwise (the host's `Error::UnsupportedHeadDim` or `Error::UnsupportedDevice`).
pub fn choose_fwd_fp8(
    head_dim: usize,
    smem_per_block_optin: usize,
    smem_per_sm: usize,
    sm90a: bool,
) -> Option<&'static Fp8FwdTile> {
    FP8_FWD_TILES
        .iter()
        .find(|t| sm90a && t.head_dim == head_dim && fits_smem(t.smem_bytes(), smem_per_block_optin, smem_per_sm))
}

/// Columns a row of a head-dim-wide tile takes in the Hopper kernels' shared memory: whole 64-column
/// blocks of the 128-byte swizzle (`ptx::wgmma`), so head dims 32 and 96 take the room of 64 and 128
/// and the last block's upper half is neither written nor read. Forward and backward layouts use it.
pub const fn swizzled_cols(head_dim: usize) -> usize {
    head_dim.next_multiple_of(64)
}

/// Byte-wise string equality usable in constants (ties the table's symbol names to the kernels' names).
pub const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    const KIB: usize = 1024;
    const A100: (usize, usize) = (164 * KIB, 164 * KIB);
    const H100: (usize, usize) = (227 * KIB, 228 * KIB);
    const SMALL: (usize, usize) = (48 * KIB, 48 * KIB);
    const HEAD_DIMS: [usize; 6] = [32, 64, 96, 128, 192, 256];

    fn pick(d: usize, dev: (usize, usize)) -> Option<FwdTile> {
        choose_fwd(d, d, 2, false, dev.0, dev.1, false).copied()
    }

    /// The persistent order takes every tile once, sections longest first: sections that divide the
    /// pairs or not, one pair, one query block, one section of all pairs.
    #[test]
    fn persistent_order_takes_every_tile_once() {
        for (m_blocks, heads) in [(1u32, 1u32), (8, 256), (24, 40), (1, 7), (64, 3), (5, 1)] {
            for section in [1, 2, 3, 7, 16, heads, heads + 5] {
                let mut seen = std::vec![0u8; (m_blocks * heads) as usize];
                let mut last = (0, 0);
                for i in 0..m_blocks * heads {
                    let (m, pair) = persistent_tile(i, m_blocks, heads, section);
                    assert!(m < m_blocks && pair < heads, "{m_blocks} {heads} {section}: {i}");
                    seen[(pair * m_blocks + m) as usize] += 1;
                    // Within a section, query blocks never rise.
                    let same_section = i % (section * m_blocks) != 0;
                    if same_section {
                        assert!(m <= last.0 && pair / section == last.1 / section, "{m_blocks} {heads} {section}");
                    }
                    last = (m, pair);
                }
                assert!(seen.iter().all(|&n| n == 1), "{m_blocks} {heads} {section}");
            }
        }
    }

    #[test]
    fn every_row_is_valid_and_named_once() {
        for (i, t) in FWD_TILES.iter().enumerate() {
            assert!(t.is_valid(), "{t:?}");
            assert_eq!(t.split_symbols[0].is_empty(), t.wgmma, "{t:?}");
            // Paged kernels on every `mma.sync` row but the A100 row at head dim 128, split too; on the
            // TMA rows unsplit.
            assert_eq!(t.paged_symbols[0].is_empty(), (t.wgmma && !t.tma) || *t == HD128_N32, "{t:?}");
            assert_eq!(t.paged_split_symbols[0].is_empty(), t.wgmma || *t == HD128_N32, "{t:?}");
            // Ticket-taking kernels exactly where the rounds' persistent ones are, named apart.
            assert_eq!(t.ticket_symbols[0].is_empty(), t.persistent_symbols[0].is_empty(), "{t:?}");
            assert!(t.ticket_symbols[0].is_empty() || t.ticket_symbols != t.persistent_symbols, "{t:?}");
            for u in &FWD_TILES[i + 1..] {
                assert_ne!(t.symbols, u.symbols);
                if !t.wgmma {
                    assert_ne!(t.split_symbols, u.split_symbols);
                    assert_ne!(t.packed_symbols, u.packed_symbols);
                }
                if !t.paged_symbols[0].is_empty() {
                    assert_ne!(t.paged_symbols, u.paged_symbols);
                }
                if !t.paged_split_symbols[0].is_empty() {
                    assert_ne!(t.paged_split_symbols, u.paged_split_symbols);
                }
                if !t.ticket_symbols[0].is_empty() {
                    assert_ne!(t.persistent_symbols, u.persistent_symbols);
                    assert_ne!(t.ticket_symbols, u.ticket_symbols);
                }
            }
        }
    }

    #[test]
    fn paged_tma_boxes_stay_in_a_page_and_fill_whole_swizzle_groups() {
        // 128-key blocks: pages of 8, 16, 24, 64, 256 and 384 keys give boxes of 8, 16, 8, 64, 128, 128.
        for (page, rows) in [(8, Some(8)), (16, Some(16)), (24, Some(8)), (64, Some(64)), (256, Some(128))] {
            assert_eq!(HD128_WGMMA_TMA.paged_box_rows(page), rows, "page {page}");
        }
        assert_eq!(HD128_WGMMA_TMA.paged_box_rows(384), Some(128));
        // 96-key blocks (head dim 192): pages of 64 take boxes of 32; 256, 32.
        assert_eq!(HD192_WGMMA_TMA.paged_box_rows(64), Some(32));
        assert_eq!(HD192_WGMMA_TMA.paged_box_rows(256), Some(32));
        // Page sizes whose boxes would split an 8-row group: the `mma.sync` rows take them.
        for page in [1, 4, 7, 12, 100] {
            assert_eq!(HD128_WGMMA_TMA.paged_box_rows(page), None, "page {page}");
            assert_eq!(HD128.paged_box_rows(page), Some(0), "page {page}");
        }
        assert_eq!(HD128_WGMMA.paged_box_rows(16), None);
        assert_eq!(HD128_N32.paged_box_rows(16), None);
        for t in FWD_TILES.iter().filter(|t| t.tma) {
            for page in 1..=1024 {
                if let Some(rows) = t.paged_box_rows(page) {
                    assert!(page % rows == 0 && t.block_n % rows == 0 && rows % 8 == 0 && rows <= 256, "{t:?}");
                }
            }
        }
    }

    #[test]
    fn h100_gets_the_two_cta_tiles() {
        let want = [HD32, HD64, HD96, HD128, HD192, HD256];
        for (d, w) in HEAD_DIMS.iter().zip(want) {
            assert_eq!(pick(*d, H100), Some(w), "d={d}");
            assert_eq!(choose_fwd(*d, *d, 2, true, H100.0, H100.1, false), Some(&w), "d={d} causal");
            assert!(w.ctas_per_sm_by_smem(2, H100.1) >= w.ctas_per_sm, "d={d}");
        }
    }

    #[test]
    fn a100_keeps_two_ctas_where_it_can() {
        // Two HD128 CTAs (2 x 103 KiB) and two HD256 CTAs (2 x 100 KiB) exceed A100's 164 KiB per SM.
        let want = [HD32, HD64, HD96, HD128_N32, HD192, HD256_W8];
        for (d, w) in HEAD_DIMS.iter().zip(want) {
            let t = pick(*d, A100).unwrap();
            assert_eq!(t, w, "d={d}");
            assert!(t.smem_bytes(2) <= A100.0);
            assert!(t.ctas_per_sm_by_smem(2, A100.1) >= t.ctas_per_sm, "d={d}");
        }
    }

    #[test]
    fn small_device_gets_fallbacks_or_none() {
        assert_eq!(pick(32, SMALL), Some(HD32));
        assert_eq!(pick(64, SMALL), Some(HD64_SMALL));
        assert_eq!(pick(96, SMALL), Some(HD96_SMALL));
        assert_eq!(pick(128, SMALL), Some(HD128_SMALL));
        // Q alone (64 rows) plus two 16-key K/V buffers exceed 48 KiB from d=192 on.
        assert_eq!(pick(192, SMALL), None);
        assert_eq!(pick(256, SMALL), None);
        for d in [32, 64, 96, 128] {
            assert!(pick(d, SMALL).unwrap().smem_bytes(2) <= 48 * KIB);
        }
    }

    #[test]
    fn hundred_kib_device_gets_the_middle_rows() {
        // sm_86 / sm_89: 99 KiB per block, 100 KiB per SM.
        let dev = (99 * KIB, 100 * KIB);
        // One CTA per SM either way: the first row of which one fits.
        assert_eq!(pick(128, dev), Some(HD128));
        assert_eq!(pick(192, dev), Some(HD192_SMALL));
        assert_eq!(pick(256, dev), Some(HD256));
    }

    #[test]
    fn unsupported_inputs_get_none() {
        assert_eq!(choose_fwd(80, 80, 2, false, H100.0, H100.1, true), None);
        assert_eq!(choose_fwd(128, 128, 4, false, H100.0, H100.1, true), None);
        assert_eq!(choose_fwd(128, 128, 2, false, 0, 0, true), None);
    }

    #[test]
    fn hopper_gets_a_wgmma_row_at_every_head_dim() {
        for d in HEAD_DIMS {
            let t = choose_fwd(d, d, 2, false, H100.0, H100.1, true).unwrap();
            assert!(t.wgmma, "d={d}");
        }
        // Dense and packed batches alike: the TMA rows where they come first.
        let rows = [
            (32, HD32_WGMMA, HD32_WGMMA),
            (64, HD64_WGMMA, HD64_WGMMA),
            (96, HD96_WGMMA, HD96_WGMMA),
            (128, HD128_WGMMA_TMA, HD128_WGMMA_TMA),
            (192, HD192_WGMMA_TMA, HD192_WGMMA_TMA),
            (256, HD256_WGMMA_TMA, HD256_WGMMA_TMA),
        ];
        for (d, dense, packed) in rows {
            assert_eq!(choose_fwd(d, d, 2, true, H100.0, H100.1, true), Some(&dense));
            let has_packed = |t: &FwdTile| !t.kernel_symbol(false, false, BatchLayout::Packed).is_empty();
            assert_eq!(choose_fwd_among(d, d, 2, H100.0, H100.1, has_packed), Some(&packed));
            for t in [dense, packed] {
                let l = t.wgmma_smem_layout(2);
                assert!(l[1].is_multiple_of(1024) && l[2].is_multiple_of(1024) && t.smem_bytes(2) <= H100.0, "{t:?}");
                assert!(t.ctas_per_sm_by_smem(2, H100.1) >= 1, "{t:?}");
            }
        }
        // Not on A100 (164 KiB would fit one CTA, but there is no sm_90a there).
        assert_eq!(pick(128, A100), Some(HD128_N32));
        assert!(HD128_WGMMA.ctas_per_sm_by_smem(2, H100.1) >= 1);
        let l = HD128_WGMMA.wgmma_smem_layout(2);
        assert!(l[0].is_multiple_of(1024) && l[1].is_multiple_of(1024));
        assert_eq!(HD128_WGMMA.smem_bytes(2), 128 * 128 * 2 + 3 * 2 * 128 * 128 * 2 + 1024);
        // Head dims 32 and 96 are stored in whole 64-column blocks.
        assert_eq!(HD96_WGMMA.smem_bytes(2), HD128_WGMMA.smem_bytes(2));
        assert_eq!(HD32_WGMMA.smem_bytes(2), HD64_WGMMA.smem_bytes(2));
        assert!(HD128_WGMMA.smem_bytes(2) <= H100.0);
    }

    #[test]
    fn value_head_dim_of_its_own() {
        let pick_v = |dev: (usize, usize), sm90a| choose_fwd(192, 128, 2, false, dev.0, dev.1, sm90a).copied();
        assert_eq!(pick_v(H100, true), Some(HD192_V128_WGMMA));
        assert_eq!(pick_v(H100, false), Some(HD192_V128));
        assert_eq!(pick_v(A100, false), Some(HD192_V128));
        assert_eq!(pick_v((99 * KIB, 100 * KIB), false), Some(HD192_V128_SMALL));
        assert_eq!(pick_v(SMALL, false), None);
        assert_eq!(choose_fwd(128, 64, 2, false, H100.0, H100.1, true), None);
        // K and V tiles of their own widths.
        assert_eq!(HD192_V128.smem_bytes(2), (128 * 200 + 2 * 64 * (200 + 136)) * 2);
        assert_eq!(HD192_V128_WGMMA.smem_bytes(2), 128 * 192 * 2 + 2 * 128 * (192 + 128) * 2 + 1024);
        assert!(HD192_V128_WGMMA.smem_bytes(2) <= H100.0);
        // V wider than Q has no room to stage O.
        assert!(!FwdTile { head_dim_v: 256, ..HD192 }.is_valid());
    }

    #[test]
    fn fp8_rows_fit_hopper_and_are_chosen_per_head_dim() {
        for (i, t) in FP8_FWD_TILES.iter().enumerate() {
            assert!(t.is_valid() && fits_smem(t.smem_bytes(), H100.0, H100.1), "{t:?}");
            assert!(FP8_FWD_TILES[i + 1..].iter().all(|u| u.symbols != t.symbols && u.split_symbol != t.split_symbol));
        }
        for (d, want) in [(64, HD64_FP8), (128, HD128_FP8), (256, HD256_FP8)] {
            assert_eq!(choose_fwd_fp8(d, H100.0, H100.1, true), Some(&want));
            assert_eq!(choose_fwd_fp8(d, H100.0, H100.1, false), None);
        }
        assert_eq!(choose_fwd_fp8(96, H100.0, H100.1, true), None);
        assert_eq!(HD128_FP8.smem_bytes(), 128 * 128 + 4 * 128 * 3 * 128 + TMA_BARRIER_BYTES + 1024);
    }

    #[test]
    fn smem_arithmetic() {
        assert_eq!(HD128.smem_bytes(2), (64 + 2 * 2 * 64) * 136 * 2);
        assert_eq!(HD128.ctas_per_sm_by_smem(2, H100.1), 2);
        assert!(str_eq(HD128.symbol(false), "attn_fwd_hd128_m64n64w4_bf16"));
        assert!(!str_eq("a", "ab"));
    }
}
