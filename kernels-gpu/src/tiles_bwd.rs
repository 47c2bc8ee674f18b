//! The backward kernel's tile table and chooser (the backward counterpart of `tiles.rs`).
//!
//! One CTA owns `block_n` keys of one K/V head and keeps their dK and dV accumulators in registers; it
//! streams the query blocks (`block_m` rows of Q and dO, with their LSE and delta) of every query head
//! of its group through shared memory. Per query block, three products, each with its own warp grid:
//!
//! 1. Sᵀ = K Qᵀ and dPᵀ = V dOᵀ (`[block_n, block_m]`): warps `sdp_warps_n` along keys × the rest along
//!    queries. P = exp2(scale·log2e·S − log2e·LSE) and dS = P ∘ (dP − delta) go to shared memory in the
//!    element type (transposed, `[key][query]`).
//! 2. dV += Pᵀ dO and dK += dSᵀ Q (`[block_n, head_dim_v]` and `[block_n, head_dim]`): warps
//!    `dkv_warps_n` along keys × the rest along the head dims. These accumulators are the persistent
//!    registers: `block_n·(head_dim + head_dim_v) / threads`.
//! 3. dQ_partial = dS K (`[block_m, head_dim]`): warps `dq_warps_m` along queries × the rest along
//!    head_dim, added to the f32 dQ accumulator in global memory.
//!
//! Shared memory: K and V (`block_n` rows), `q_stages` buffers of Q and dO (`block_m` rows), every row
//! padded by 16 bytes as in the forward; Pᵀ and dSᵀ (`block_n` rows of `block_m + 8` elements); LSE and
//! delta (`q_stages · block_m` f32 each); 96 bytes of per-CTA constants.

/// Bytes of shared memory holding a CTA's loop-invariant addresses and strides (10 u64) and, in
/// deterministic mode, its work-item ticket (one u32 at byte 80) and the Hopper kernel's two dQ turns
/// (bytes 88..96); then the Hopper TMA rows' two `mbarrier`s, one per query stage (bytes 96..112).
pub const BWD_CONSTS_BYTES: usize = 112;

/// One compiled backward-kernel variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BwdTile {
    /// Head dim of Q and K (dQ, dK).
    pub head_dim: usize,
    /// Head dim of V and dO (dV): `head_dim`, or less in the rows for a value head dim of its own.
    pub head_dim_v: usize,
    /// Query rows per step of the query loop.
    pub block_m: usize,
    /// Keys per CTA.
    pub block_n: usize,
    pub warps: usize,
    /// Q/dO buffers: 2 = the next query block loads while this one is computed; 1 = load after compute.
    pub q_stages: usize,
    /// Phase 1 warp grid: warps along keys.
    pub sdp_warps_n: usize,
    /// Phase 2 warp grid: warps along keys.
    pub dkv_warps_n: usize,
    /// Phase 3 warp grid: warps along queries.
    pub dq_warps_m: usize,
    /// The Hopper kernel (`bwd/hopper.rs`: `wgmma`, bulk reductions; only in the sm_90a PTX, so only
    /// for compute capability 9.0). Its warp-grid fields are unused.
    pub wgmma: bool,
    /// A Hopper row whose Q and dO come by TMA (`cp.async.bulk.tensor`, tensor maps the host builds:
    /// `abi::BwdTensorMaps`, the kernel's second parameter) from a loader warp, against one `mbarrier`
    /// per query stage; dense and packed batches.
    pub tma: bool,
    /// Kernel symbols: `[bf16, f16]`.
    pub symbols: [&'static str; 2],
    /// Symbols of the softcap instantiation (dS chained through the tanh): `[bf16, f16]`. Separate
    /// kernels, so that the plain ones keep their registers.
    pub softcap_symbols: [&'static str; 2],
    /// Symbols of the instantiations for packed variable-length batches (`ScoreParams::cu_seqlens_q`),
    /// without and with a softcap: `[bf16, f16]` each.
    pub packed_symbols: [&'static str; 2],
    pub packed_softcap_symbols: [&'static str; 2],
}

impl BwdTile {
    pub const fn threads(&self) -> usize {
        self.warps * 32
    }
    /// Phase 1: m16 tiles (keys) and n8 tiles (queries) per warp.
    pub const fn sdp_m_tiles(&self) -> usize {
        self.block_n / self.sdp_warps_n / 16
    }
    pub const fn sdp_n_tiles(&self) -> usize {
        self.block_m / (self.warps / self.sdp_warps_n) / 8
    }
    /// Phase 2: m16 tiles (keys) and n8 tiles (head_dim) per warp.
    pub const fn dkv_m_tiles(&self) -> usize {
        self.block_n / self.dkv_warps_n / 16
    }
    pub const fn dkv_n_tiles(&self) -> usize {
        self.head_dim / (self.warps / self.dkv_warps_n) / 8
    }
    /// Phase 2: n8 tiles of dV (`head_dim_v`) per warp.
    pub const fn dv_n_tiles(&self) -> usize {
        self.head_dim_v / (self.warps / self.dkv_warps_n) / 8
    }
    /// Phase 3: m16 tiles (queries) and n8 tiles (head_dim) per warp.
    pub const fn dq_m_tiles(&self) -> usize {
        self.block_m / self.dq_warps_m / 16
    }
    pub const fn dq_n_tiles(&self) -> usize {
        self.head_dim / (self.warps / self.dq_warps_m) / 8
    }
    /// Elements per shared-memory row of K and Q (16 bytes of padding: conflict-free ldmatrix).
    pub const fn smem_row(&self) -> usize {
        self.head_dim + 8
    }
    /// Elements per shared-memory row of V and dO.
    pub const fn smem_row_v(&self) -> usize {
        self.head_dim_v + 8
    }
    /// Elements per shared-memory row of Pᵀ and dSᵀ.
    pub const fn p_row(&self) -> usize {
        self.block_m + 8
    }
    /// Byte offsets of the shared-memory regions: `[k, v, q, d_o, p, ds, lse, delta, consts, end]`
    /// (`consts`: the CTA's loop-invariant addresses and strides, `BWD_CONSTS_BYTES`).
    pub const fn smem_layout(&self, elem_bytes: usize) -> [usize; 10] {
        let (row, row_v) = (self.smem_row() * elem_bytes, self.smem_row_v() * elem_bytes);
        let q_rows = self.q_stages * self.block_m;
        let p = self.block_n * self.p_row() * elem_bytes;
        let f = self.q_stages * self.block_m * 4;
        let k = 0;
        let v = k + self.block_n * row;
        let qo = v + self.block_n * row_v;
        let d_o = qo + q_rows * row;
        let pp = d_o + q_rows * row_v;
        let ds = pp + p;
        let lse = ds + p;
        let delta = lse + f;
        let consts = delta + f;
        [k, v, qo, d_o, pp, ds, lse, delta, consts, consts + BWD_CONSTS_BYTES]
    }
    /// Hopper rows whose warpgroups split the head dim (`bwd/hopper_wide.rs`, head dim 256): each owns
    /// every key of the block and half the head-dim columns of dK, dV and dQ, where the other rows'
    /// warpgroups own half the keys and every column (whose dK and dV would be 256 registers here).
    pub const fn wgmma_splits_head_dim(&self) -> bool {
        self.wgmma && self.head_dim > 128
    }
    /// Head-dim split rows: the f32 registers per thread of each of dK and dQ in a warpgroup's two
    /// column parts (`wgmma_wide_parts` of the head dim).
    pub const fn wgmma_wide_regs(&self) -> [usize; 2] {
        let p = wgmma_wide_parts(self.head_dim, 0);
        [p[0].1, p[1].1]
    }
    /// Head-dim split rows: the same for dV (`wgmma_wide_parts` of `head_dim_v`).
    pub const fn wgmma_wide_regs_v(&self) -> [usize; 2] {
        let p = wgmma_wide_parts(self.head_dim_v, 0);
        [p[0].1, p[1].1]
    }
    /// Hopper rows: bytes from one query stage's Q (and dO) tile to the next stage's. The head-dim
    /// split rows keep a stage's Q and dO tiles adjacent, so that once a step's products have read them
    /// the step's dQ (f32, `block_m × head_dim`) is staged over both: the stage takes the larger of the
    /// two (the staged dQ where dO's head dim is smaller).
    pub const fn wgmma_stage_stride(&self, elem_bytes: usize) -> usize {
        let cols = crate::tiles::swizzled_cols;
        let tile = self.block_m * cols(self.head_dim) * elem_bytes;
        if self.wgmma_splits_head_dim() {
            let tiles = tile + self.block_m * cols(self.head_dim_v) * elem_bytes;
            let staged = self.block_m * self.head_dim * 4;
            if tiles > staged {
                tiles
            } else {
                staged
            }
        } else {
            tile
        }
    }
    /// Hopper rows: the column where warpgroup 1's part of dQ starts when the warpgroups split dQ's
    /// columns (64-row query blocks): half the head dim, or 64 at head dim 96, where half (48) would
    /// start inside a 64-column block and run past it, which an MN-major operand cannot.
    pub const fn wgmma_dq_split(&self) -> usize {
        if self.head_dim == 96 {
            64
        } else {
            self.head_dim / 2
        }
    }
    /// Hopper rows: the columns of each warpgroup's part of dQ (64 query rows each): the head dim with
    /// 128-row blocks (the warpgroups split the rows), else the wider of the two column parts (at head
    /// dim 96 warpgroup 1 computes 64 columns of which it keeps 32; K's columns 96-127 are zeros).
    pub const fn wgmma_dq_cols(&self) -> usize {
        if self.block_m == 128 {
            self.head_dim
        } else {
            let split = self.wgmma_dq_split();
            if split > self.head_dim - split {
                split
            } else {
                self.head_dim - split
            }
        }
    }
    /// Hopper rows: whether the warpgroups compute dQ transposed, dQᵀ = Kᵀ dSᵀ (`[head_dim, block_m]`,
    /// each warpgroup 64 of the head dim's rows): the query blocks whose rows are no multiple of
    /// `wgmma`'s 64 (80 at head dims 96 and 128: Sᵀ and dPᵀ one n80 product each, as FlashAttention-3's
    /// non-causal backward), whose dQ no warpgroup could own in 64-row parts.
    pub const fn wgmma_dq_transposed(&self) -> bool {
        !self.block_m.is_multiple_of(64)
    }
    /// Hopper rows: the f32 registers per thread of a warpgroup's part of dQ (or dQᵀ).
    pub const fn wgmma_dq_regs(&self) -> usize {
        if self.wgmma_dq_transposed() {
            self.block_m / 2
        } else {
            self.wgmma_dq_cols() / 2
        }
    }
    /// Hopper rows: dQ staging buffers, two (one step's reduction reads one while the next step fills
    /// the other) where they fit; one for 80-row blocks, whose second would take the shared memory past
    /// an H100's 227 KiB (the writer frees it once its reduction has read it, long before the next step
    /// stages).
    pub const fn wgmma_dq_stages(&self) -> usize {
        if self.wgmma_dq_transposed() {
            1
        } else {
            2
        }
    }
    /// Byte offsets of the Hopper kernel's shared-memory regions from a 1024-byte aligned base:
    /// `[k, v, q, d_o, ds, dq, lse, delta, consts, end]`. K, V (`block_n` rows), `q_stages` buffers of Q
    /// and dO (`block_m` rows) and dSᵀ (`block_n` rows of `block_m`) are 128-byte swizzled element tiles
    /// (`ptx::wgmma`), each starting on a 1024-byte boundary (dS untransposed, `block_m` rows of
    /// `block_n`, where dQ is computed transposed); dq holds `wgmma_dq_stages` f32 `[block_m, head_dim]`
    /// staging buffers of the dQ reductions.
    ///
    /// The head-dim split rows (`wgmma_splits_head_dim`): `[k, v, q, d_o, ds, p, lse, delta, consts,
    /// end]`, stage s's Q at `q + s·wgmma_stage_stride` and its dO right after it, where the step's dQ is
    /// staged (no staging buffers of their own); Pᵀ (`[block_n keys][block_m queries]`) in the dq slot.
    pub const fn wgmma_smem_layout(&self, elem_bytes: usize) -> [usize; 10] {
        let stored = crate::tiles::swizzled_cols(self.head_dim);
        if self.wgmma_splits_head_dim() {
            let stored_v = crate::tiles::swizzled_cols(self.head_dim_v);
            let (k_tile, v_tile) = (self.block_n * stored * elem_bytes, self.block_n * stored_v * elem_bytes);
            let tile = self.block_m * stored * elem_bytes;
            let pds = self.block_n * self.block_m * elem_bytes;
            let f = self.q_stages * self.block_m * 4;
            let (k, v, q) = (0, k_tile, k_tile + v_tile);
            let ds = q + self.q_stages * self.wgmma_stage_stride(elem_bytes);
            let (pp, lse) = (ds + pds, ds + 2 * pds);
            let (delta, consts) = (lse + f, lse + 2 * f);
            return [k, v, q, q + tile, ds, pp, lse, delta, consts, consts + BWD_CONSTS_BYTES];
        }
        let kv = self.block_n * stored * elem_bytes;
        let q = self.q_stages * self.block_m * stored * elem_bytes;
        let f = self.q_stages * self.block_m * 4;
        let k = 0;
        let v = k + kv;
        let qo = v + kv;
        let d_o = qo + q;
        let ds = d_o + q;
        let dq = ds + self.block_n * self.block_m * elem_bytes;
        let lse = dq + self.wgmma_dq_stages() * self.block_m * self.head_dim * 4;
        let delta = lse + f;
        let consts = delta + f;
        [k, v, qo, d_o, ds, dq, lse, delta, consts, consts + BWD_CONSTS_BYTES]
    }
    /// Dynamic shared memory of one CTA, in bytes (the Hopper kernel's includes 1024 bytes of slack to
    /// align its base).
    pub const fn smem_bytes(&self, elem_bytes: usize) -> usize {
        if self.wgmma {
            self.wgmma_smem_layout(elem_bytes)[9] + 1024
        } else {
            self.smem_layout(elem_bytes)[9]
        }
    }
    /// Query blocks of a sequence of `seqlen_q` rows.
    pub const fn m_blocks(&self, seqlen_q: usize) -> usize {
        seqlen_q.div_ceil(self.block_m)
    }
    /// The kernel for an element size class (bf16 = 0, f16 = 1), with or without a softcap, for a dense
    /// or a packed batch.
    pub const fn symbol(&self, f16: bool, softcap: bool, packed: bool) -> &'static str {
        let symbols = match (softcap, packed) {
            (false, false) => &self.symbols,
            (true, false) => &self.softcap_symbols,
            (false, true) => &self.packed_symbols,
            (true, true) => &self.packed_softcap_symbols,
        };
        symbols[f16 as usize]
    }
    /// Whether the row's eight symbols are `names`, in the order of `symbols`, `softcap_symbols`,
    /// `packed_symbols`, `packed_softcap_symbols` (bf16, then f16): ties the entry points to the table.
    pub const fn names_are(&self, names: [&str; 8]) -> bool {
        let mine = [
            self.symbols[0],
            self.symbols[1],
            self.softcap_symbols[0],
            self.softcap_symbols[1],
            self.packed_symbols[0],
            self.packed_symbols[1],
            self.packed_softcap_symbols[0],
            self.packed_softcap_symbols[1],
        ];
        let mut i = 0;
        while i < 8 {
            if !crate::tiles::str_eq(mine[i], names[i]) {
                return false;
            }
            i += 1;
        }
        true
    }
    /// Whether the row is well formed (checked at compile time for every instantiated kernel).
    pub const fn is_valid(&self) -> bool {
        let (d, dv, w) = (self.head_dim, self.head_dim_v, self.warps);
        if self.wgmma_splits_head_dim() {
            // `bwd/hopper_wide.rs`: 64 keys and 64-row query blocks, the warpgroups splitting the head
            // dim (`wgmma_wide_regs`); at head dim 256 dK and dV 64 + 64 f32 per thread, dQ 64 more.
            // TMA rows only (the staged dQ goes over the stage's Q and dO, which the loader then
            // refills).
            return matches!((d, dv), (192, 192) | (256, 256) | (192, 128))
                && self.block_m == 64
                && self.block_n == 64
                && w == 12
                && self.q_stages == 2
                && self.tma;
        }
        if self.wgmma {
            // The shapes `bwd/hopper.rs` implements: each compute warpgroup owns 64 keys; with 64-row
            // query blocks the warpgroups split dQ's columns (`wgmma_dq_split`), with 128-row blocks its
            // rows, with 80-row blocks (head dims 96, 128) the rows of dQᵀ (`wgmma_dq_transposed`). dK, dV,
            // Sᵀ and dPᵀ in registers: head_dim + block_m f32 per thread of the 240 at most 208.
            return matches!(d, 32 | 64 | 96 | 128)
                && dv == d
                && (self.block_m == 64 || self.block_m == 128 || (self.block_m == 80 && (d == 96 || d == 128)))
                && d + self.block_m <= 208
                && self.block_n == 128
                && w == 12
                && self.q_stages == 2;
        }
        d.is_multiple_of(32)
            && dv.is_multiple_of(32)
            && (w == 4 || w == 8)
            && (self.q_stages == 1 || self.q_stages == 2)
            && self.block_m.is_multiple_of(16)
            && self.block_n.is_multiple_of(16)
            && w.is_multiple_of(self.sdp_warps_n)
            && w.is_multiple_of(self.dkv_warps_n)
            && w.is_multiple_of(self.dq_warps_m)
            && self.sdp_m_tiles() >= 1
            && self.sdp_m_tiles() * 16 * self.sdp_warps_n == self.block_n
            // B fragments of phase 1 come 16 queries (two n8 tiles) per ldmatrix.x4.
            && self.sdp_n_tiles() >= 2
            && self.sdp_n_tiles().is_multiple_of(2)
            && self.sdp_n_tiles() * 8 * (w / self.sdp_warps_n) == self.block_m
            && self.dkv_m_tiles() >= 1
            && self.dkv_m_tiles() * 16 * self.dkv_warps_n == self.block_n
            && self.dkv_n_tiles() >= 2
            && self.dkv_n_tiles().is_multiple_of(2)
            && self.dkv_n_tiles() * 8 * (w / self.dkv_warps_n) == d
            && self.dv_n_tiles() >= 2
            && self.dv_n_tiles().is_multiple_of(2)
            && self.dv_n_tiles() * 8 * (w / self.dkv_warps_n) == dv
            && self.dq_m_tiles() >= 1
            && self.dq_m_tiles() * 16 * self.dq_warps_m == self.block_m
            && self.dq_n_tiles() >= 2
            && self.dq_n_tiles().is_multiple_of(2)
            && self.dq_n_tiles() * 8 * (w / self.dq_warps_m) == d
            // LSE/delta are copied by the first block_m threads.
            && self.block_m <= w * 32
    }
}

macro_rules! tile {
    ($d:literal, $m:literal, $n:literal, $w:literal, $s:literal, $wn1:literal, $wn2:literal, $wm3:literal) => {
        tile!($d, $d, concat!("hd", $d), $m, $n, $w, $s, $wn1, $wn2, $wm3)
    };
    ($d:literal, $dv:literal, $dims:expr, $m:literal, $n:literal, $w:literal, $s:literal, $wn1:literal, $wn2:literal, $wm3:literal) => {
        BwdTile {
            head_dim: $d,
            head_dim_v: $dv,
            block_m: $m,
            block_n: $n,
            warps: $w,
            q_stages: $s,
            sdp_warps_n: $wn1,
            dkv_warps_n: $wn2,
            dq_warps_m: $wm3,
            wgmma: false,
            tma: false,
            symbols: [
                concat!("attn_bwd_", $dims, "_m", $m, "n", $n, "s", $s, "_bf16"),
                concat!("attn_bwd_", $dims, "_m", $m, "n", $n, "s", $s, "_f16"),
            ],
            softcap_symbols: [
                concat!("attn_bwd_softcap_", $dims, "_m", $m, "n", $n, "s", $s, "_bf16"),
                concat!("attn_bwd_softcap_", $dims, "_m", $m, "n", $n, "s", $s, "_f16"),
            ],
            packed_symbols: [
                concat!("attn_bwd_varlen_", $dims, "_m", $m, "n", $n, "s", $s, "_bf16"),
                concat!("attn_bwd_varlen_", $dims, "_m", $m, "n", $n, "s", $s, "_f16"),
            ],
            packed_softcap_symbols: [
                concat!("attn_bwd_varlen_softcap_", $dims, "_m", $m, "n", $n, "s", $s, "_bf16"),
                concat!("attn_bwd_varlen_softcap_", $dims, "_m", $m, "n", $n, "s", $s, "_f16"),
            ],
        }
    };
}

// Per head dim the first row that fits the device is taken (`choose_bwd`). Registers: the dK and dV
// accumulators (`2·block_n·head_dim/threads` f32) live through the whole query loop; phase 1 adds S
// (`block_n·block_m/threads` f32), then P packed in half as many registers and dP; phase 3 adds
// `block_m·head_dim/threads`. Everything loop-invariant is kept out of registers (see `bwd/mainloop.rs`).
// Warp grids: the squarest per-warp tile loads the fewest fragments per mma (phase 3 at D=128: 32x32
// per warp loads 4 ldmatrix.x4 per 8 mma, 16x64 loads 5).

/// 77 KiB; dK+dV 32 f32/thread.
pub const BWD_HD32: BwdTile = tile!(32, 64, 128, 8, 2, 4, 8, 4);
/// 109 KiB (2 CTAs per H100 SM by smem); dK+dV 64.
pub const BWD_HD64: BwdTile = tile!(64, 64, 128, 8, 2, 4, 4, 4);
/// 141 KiB; dK+dV 96.
pub const BWD_HD96: BwdTile = tile!(96, 64, 128, 8, 2, 4, 4, 4);
/// 137 KiB, 32-row query blocks: A100 (163 KiB per block), and every device without the Hopper
/// kernel. (A 64-row variant, 173 KiB, sat at the 255-register limit with dK+dV 128 + S 32 + dP 32,
/// which the score stage's modifiers pushed into spills.)
pub const BWD_HD128_M32: BwdTile = tile!(128, 32, 128, 8, 2, 8, 4, 2);
/// 169 KiB; 64 keys per CTA keep dK+dV at 96.
pub const BWD_HD192: BwdTile = tile!(192, 64, 64, 8, 2, 4, 4, 2);
/// 111 KiB: A100 fallback with 32-row query blocks.
pub const BWD_HD192_M32: BwdTile = tile!(192, 32, 64, 8, 2, 4, 4, 2);
/// 151 KiB; dK+dV 128, 32-row query blocks keep phase 3 (dQ) at 32 f32/thread.
pub const BWD_HD256: BwdTile = tile!(256, 32, 64, 8, 2, 4, 4, 1);
/// 145 KiB (A100 too): `BWD_HD192`'s grid with V and dO rows of head dim 128 (dK+dV 80).
pub const BWD_HD192_V128: BwdTile = tile!(192, 128, "hd192v128", 64, 64, 8, 2, 4, 4, 2);

macro_rules! wgmma_bwd_tile {
    ($d:literal, $m:literal) => {
        BwdTile {
            head_dim: $d,
            head_dim_v: $d,
            block_m: $m,
            block_n: 128,
            warps: 12,
            q_stages: 2,
            sdp_warps_n: 2,
            dkv_warps_n: 2,
            dq_warps_m: 1,
            wgmma: true,
            tma: false,
            symbols: [
                concat!("attn_bwd_hd", $d, "_m", $m, "n128_wgmma_bf16"),
                concat!("attn_bwd_hd", $d, "_m", $m, "n128_wgmma_f16"),
            ],
            softcap_symbols: [
                concat!("attn_bwd_softcap_hd", $d, "_m", $m, "n128_wgmma_bf16"),
                concat!("attn_bwd_softcap_hd", $d, "_m", $m, "n128_wgmma_f16"),
            ],
            packed_symbols: [
                concat!("attn_bwd_varlen_hd", $d, "_m", $m, "n128_wgmma_bf16"),
                concat!("attn_bwd_varlen_hd", $d, "_m", $m, "n128_wgmma_f16"),
            ],
            packed_softcap_symbols: [
                concat!("attn_bwd_varlen_softcap_hd", $d, "_m", $m, "n128_wgmma_bf16"),
                concat!("attn_bwd_varlen_softcap_hd", $d, "_m", $m, "n128_wgmma_f16"),
            ],
        }
    };
}

// Hopper (sm_90a): `wgmma` with 128 keys per CTA in two warpgroups plus a third whose first warp writes
// dQ (warp-specialised: 240 registers per compute thread, 24 for the writer's group).

/// 128-row query blocks (at head dim 64 1.11-1.28× faster than 64-row ones on an H200); element tiles
/// stored as head dim 64.
pub const BWD_HD32_WGMMA: BwdTile = wgmma_bwd_tile!(32, 128);
/// 128-row query blocks.
pub const BWD_HD64_WGMMA: BwdTile = wgmma_bwd_tile!(64, 128);
/// Element tiles stored as head dim 128, 64-row query blocks (dK, dV, Sᵀ and dPᵀ: 160 registers).
pub const BWD_HD96_WGMMA: BwdTile = wgmma_bwd_tile!(96, 64);
/// 210 KiB, 64-row query blocks (dK and dV alone are 128 registers).
pub const BWD_HD128_WGMMA: BwdTile = wgmma_bwd_tile!(128, 64);

/// A Hopper row with its Q and dO loads by TMA (`BwdTile::tma`): `[dense, softcap, packed, packed with a
/// softcap]` symbols, bf16 then f16 each.
const fn tma_row(
    row: BwdTile,
    [symbols, softcap_symbols, packed_symbols, packed_softcap_symbols]: [[&'static str; 2]; 4],
) -> BwdTile {
    BwdTile { tma: true, symbols, softcap_symbols, packed_symbols, packed_softcap_symbols, ..row }
}
/// `BWD_HD32_WGMMA` with its Q and dO by TMA (one 64-column box per tile, columns 32-63 zero-filled),
/// first.
pub const BWD_HD32_WGMMA_TMA: BwdTile = tma_row(
    BWD_HD32_WGMMA,
    [
        ["attn_bwd_hd32_m128n128_wgmma_tma_bf16", "attn_bwd_hd32_m128n128_wgmma_tma_f16"],
        ["attn_bwd_softcap_hd32_m128n128_wgmma_tma_bf16", "attn_bwd_softcap_hd32_m128n128_wgmma_tma_f16"],
        ["attn_bwd_varlen_hd32_m128n128_wgmma_tma_bf16", "attn_bwd_varlen_hd32_m128n128_wgmma_tma_f16"],
        ["attn_bwd_varlen_softcap_hd32_m128n128_wgmma_tma_bf16", "attn_bwd_varlen_softcap_hd32_m128n128_wgmma_tma_f16"],
    ],
);
/// `BWD_HD96_WGMMA` with its Q and dO by TMA (two 64-column boxes per tile, columns 96-127
/// zero-filled), first.
pub const BWD_HD96_WGMMA_TMA: BwdTile = tma_row(
    BWD_HD96_WGMMA,
    [
        ["attn_bwd_hd96_m64n128_wgmma_tma_bf16", "attn_bwd_hd96_m64n128_wgmma_tma_f16"],
        ["attn_bwd_softcap_hd96_m64n128_wgmma_tma_bf16", "attn_bwd_softcap_hd96_m64n128_wgmma_tma_f16"],
        ["attn_bwd_varlen_hd96_m64n128_wgmma_tma_bf16", "attn_bwd_varlen_hd96_m64n128_wgmma_tma_f16"],
        ["attn_bwd_varlen_softcap_hd96_m64n128_wgmma_tma_bf16", "attn_bwd_varlen_softcap_hd96_m64n128_wgmma_tma_f16"],
    ],
);
/// `BWD_HD64_WGMMA` with its Q and dO by TMA, first.
pub const BWD_HD64_WGMMA_TMA: BwdTile = tma_row(
    BWD_HD64_WGMMA,
    [
        ["attn_bwd_hd64_m128n128_wgmma_tma_bf16", "attn_bwd_hd64_m128n128_wgmma_tma_f16"],
        ["attn_bwd_softcap_hd64_m128n128_wgmma_tma_bf16", "attn_bwd_softcap_hd64_m128n128_wgmma_tma_f16"],
        ["attn_bwd_varlen_hd64_m128n128_wgmma_tma_bf16", "attn_bwd_varlen_hd64_m128n128_wgmma_tma_f16"],
        ["attn_bwd_varlen_softcap_hd64_m128n128_wgmma_tma_bf16", "attn_bwd_varlen_softcap_hd64_m128n128_wgmma_tma_f16"],
    ],
);
/// `BWD_HD128_WGMMA` with its Q and dO by TMA (second to the 80-row one).
pub const BWD_HD128_WGMMA_TMA: BwdTile = tma_row(
    BWD_HD128_WGMMA,
    [
        ["attn_bwd_hd128_m64n128_wgmma_tma_bf16", "attn_bwd_hd128_m64n128_wgmma_tma_f16"],
        ["attn_bwd_softcap_hd128_m64n128_wgmma_tma_bf16", "attn_bwd_softcap_hd128_m64n128_wgmma_tma_f16"],
        ["attn_bwd_varlen_hd128_m64n128_wgmma_tma_bf16", "attn_bwd_varlen_hd128_m64n128_wgmma_tma_f16"],
        ["attn_bwd_varlen_softcap_hd128_m64n128_wgmma_tma_bf16", "attn_bwd_varlen_softcap_hd128_m64n128_wgmma_tma_f16"],
    ],
);
/// 80-row query blocks by TMA (205 KiB with one dQ staging buffer): Sᵀ and dPᵀ as n80 products, dQ
/// computed transposed (`BwdTile::wgmma_dq_transposed`); first (on an H100 1.04-1.08×
/// the 64-row row's rate at N ≥ 4K, deterministic 1.11-1.14×, docs/perf.md).
pub const BWD_HD128_M80_WGMMA_TMA: BwdTile = tma_row(
    wgmma_bwd_tile!(128, 80),
    [
        ["attn_bwd_hd128_m80n128_wgmma_tma_bf16", "attn_bwd_hd128_m80n128_wgmma_tma_f16"],
        ["attn_bwd_softcap_hd128_m80n128_wgmma_tma_bf16", "attn_bwd_softcap_hd128_m80n128_wgmma_tma_f16"],
        ["attn_bwd_varlen_hd128_m80n128_wgmma_tma_bf16", "attn_bwd_varlen_hd128_m80n128_wgmma_tma_f16"],
        ["attn_bwd_varlen_softcap_hd128_m80n128_wgmma_tma_bf16", "attn_bwd_varlen_softcap_hd128_m80n128_wgmma_tma_f16"],
    ],
);

/// `BWD_HD128_M80_WGMMA_TMA` at head dim 96 (dQᵀ's rows 96-127 from K's zero columns dropped).
pub const BWD_HD96_M80_WGMMA_TMA: BwdTile = tma_row(
    wgmma_bwd_tile!(96, 80),
    [
        ["attn_bwd_hd96_m80n128_wgmma_tma_bf16", "attn_bwd_hd96_m80n128_wgmma_tma_f16"],
        ["attn_bwd_softcap_hd96_m80n128_wgmma_tma_bf16", "attn_bwd_softcap_hd96_m80n128_wgmma_tma_f16"],
        ["attn_bwd_varlen_hd96_m80n128_wgmma_tma_bf16", "attn_bwd_varlen_hd96_m80n128_wgmma_tma_f16"],
        ["attn_bwd_varlen_softcap_hd96_m80n128_wgmma_tma_bf16", "attn_bwd_varlen_softcap_hd96_m80n128_wgmma_tma_f16"],
    ],
);

/// Head-dim split rows (`bwd/hopper_wide.rs`): warpgroup `w`'s column parts of a product `cols` wide
/// (dK and dQ: the head dim; dV: the value head dim), each `(first column, f32 registers per thread)`,
/// a part's registers being half its columns (the second part `(0, 0)` where there is none): at 256
/// columns 128w.., at 128 the 64-column block w, at 192 block w and 32 columns of block 2 (96 columns
/// from column 96 would start inside a 64-column block and run past it, which an MN-major operand
/// cannot).
pub const fn wgmma_wide_parts(cols: usize, w: usize) -> [(usize, usize); 2] {
    match cols {
        256 => [(128 * w, 64), (0, 0)],
        192 => [(64 * w, 32), (128 + 32 * w, 16)],
        _ => [(64 * w, 32), (0, 0)],
    }
}

/// Head dim 256 on Hopper (`bwd/hopper_wide.rs`): 64 keys per CTA, both compute warpgroups over all of
/// them, each owning 128 of the head dim's columns of dK, dV and dQ; Q and dO by TMA; 215 KiB. First.
pub const BWD_HD256_WGMMA_TMA: BwdTile = BwdTile {
    head_dim: 256,
    head_dim_v: 256,
    block_m: 64,
    block_n: 64,
    tma: true,
    symbols: ["attn_bwd_hd256_m64n64_wgmma_tma_bf16", "attn_bwd_hd256_m64n64_wgmma_tma_f16"],
    softcap_symbols: ["attn_bwd_softcap_hd256_m64n64_wgmma_tma_bf16", "attn_bwd_softcap_hd256_m64n64_wgmma_tma_f16"],
    packed_symbols: ["attn_bwd_varlen_hd256_m64n64_wgmma_tma_bf16", "attn_bwd_varlen_hd256_m64n64_wgmma_tma_f16"],
    packed_softcap_symbols: [
        "attn_bwd_varlen_softcap_hd256_m64n64_wgmma_tma_bf16",
        "attn_bwd_varlen_softcap_hd256_m64n64_wgmma_tma_f16",
    ],
    ..BWD_HD128_WGMMA
};

/// `BWD_HD256_WGMMA_TMA` at head dim 192 (each warpgroup's columns in parts of 64 and 32); 163 KiB.
/// First.
pub const BWD_HD192_WGMMA_TMA: BwdTile = BwdTile {
    head_dim: 192,
    head_dim_v: 192,
    symbols: ["attn_bwd_hd192_m64n64_wgmma_tma_bf16", "attn_bwd_hd192_m64n64_wgmma_tma_f16"],
    softcap_symbols: ["attn_bwd_softcap_hd192_m64n64_wgmma_tma_bf16", "attn_bwd_softcap_hd192_m64n64_wgmma_tma_f16"],
    packed_symbols: ["attn_bwd_varlen_hd192_m64n64_wgmma_tma_bf16", "attn_bwd_varlen_hd192_m64n64_wgmma_tma_f16"],
    packed_softcap_symbols: [
        "attn_bwd_varlen_softcap_hd192_m64n64_wgmma_tma_bf16",
        "attn_bwd_varlen_softcap_hd192_m64n64_wgmma_tma_f16",
    ],
    ..BWD_HD256_WGMMA_TMA
};

/// Q/K of head dim 192 with V of 128 on Hopper (the head-dim split kernel; dV's columns 64w..64w+63),
/// first at that pair: each stage as large as its f32 dQ (48 KiB) over Q and dO (40 KiB).
pub const BWD_HD192_V128_WGMMA_TMA: BwdTile = BwdTile {
    head_dim_v: 128,
    symbols: ["attn_bwd_hd192v128_m64n64_wgmma_tma_bf16", "attn_bwd_hd192v128_m64n64_wgmma_tma_f16"],
    softcap_symbols: [
        "attn_bwd_softcap_hd192v128_m64n64_wgmma_tma_bf16",
        "attn_bwd_softcap_hd192v128_m64n64_wgmma_tma_f16",
    ],
    packed_symbols: [
        "attn_bwd_varlen_hd192v128_m64n64_wgmma_tma_bf16",
        "attn_bwd_varlen_hd192v128_m64n64_wgmma_tma_f16",
    ],
    packed_softcap_symbols: [
        "attn_bwd_varlen_softcap_hd192v128_m64n64_wgmma_tma_bf16",
        "attn_bwd_varlen_softcap_hd192v128_m64n64_wgmma_tma_f16",
    ],
    ..BWD_HD192_WGMMA_TMA
};

/// Every compiled variant, in order of preference within a head dim.
pub const BWD_TILES: &[BwdTile] = &[
    BWD_HD32_WGMMA_TMA,
    BWD_HD32_WGMMA,
    BWD_HD32,
    BWD_HD64_WGMMA_TMA,
    BWD_HD64_WGMMA,
    BWD_HD64,
    BWD_HD96_M80_WGMMA_TMA,
    BWD_HD96_WGMMA_TMA,
    BWD_HD96_WGMMA,
    BWD_HD96,
    BWD_HD128_M80_WGMMA_TMA,
    BWD_HD128_WGMMA_TMA,
    BWD_HD128_WGMMA,
    BWD_HD128_M32,
    BWD_HD192_WGMMA_TMA,
    BWD_HD192,
    BWD_HD192_M32,
    BWD_HD256_WGMMA_TMA,
    BWD_HD256,
    BWD_HD192_V128_WGMMA_TMA,
    BWD_HD192_V128,
];

/// The backward tile for a problem on a device: the first compiled row for `head_dim` and `head_dim_v` whose shared
/// memory fits one block's opt-in limit and one SM, Hopper rows only where `sm90a` (compute
/// capability 9.0), for dense and packed batches alike (every row has both kernels). `None` when none
/// fits.
pub fn choose_bwd(
    head_dim: usize,
    head_dim_v: usize,
    elem_bytes: usize,
    smem_per_block_optin: usize,
    smem_per_sm: usize,
    sm90a: bool,
) -> Option<&'static BwdTile> {
    if elem_bytes != 2 {
        return None;
    }
    BWD_TILES
        .iter()
        .filter(|t| t.head_dim == head_dim && t.head_dim_v == head_dim_v && (sm90a || !t.wgmma))
        .find(|t| crate::tiles::fits_smem(t.smem_bytes(elem_bytes), smem_per_block_optin, smem_per_sm))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    const KIB: usize = 1024;
    const A100: (usize, usize) = (163 * KIB, 164 * KIB);
    const H100: (usize, usize) = (227 * KIB, 228 * KIB);

    #[test]
    fn every_row_is_valid_and_named_once() {
        for (i, t) in BWD_TILES.iter().enumerate() {
            assert!(t.is_valid(), "{t:?}");
            for u in &BWD_TILES[i + 1..] {
                assert_ne!(t.symbols, u.symbols);
                assert_ne!(t.softcap_symbols, u.softcap_symbols);
                if !t.tma && !u.tma {
                    assert_ne!(t.packed_symbols, u.packed_symbols);
                    assert_ne!(t.packed_softcap_symbols, u.packed_softcap_symbols);
                }
            }
        }
    }

    #[test]
    fn every_head_dim_fits_h100_and_a100() {
        for d in [32, 64, 96, 128, 192, 256] {
            for sm90a in [false, true] {
                let h = choose_bwd(d, d, 2, H100.0, H100.1, sm90a).unwrap();
                assert_eq!(h.q_stages, 2, "d={d}");
                assert!(h.smem_bytes(2) <= H100.0, "d={d}");
                assert_eq!(h.wgmma, sm90a, "d={d}");
            }
            let a = choose_bwd(d, d, 2, A100.0, A100.1, false).unwrap();
            assert!(a.smem_bytes(2) <= A100.0, "d={d}");
        }
        assert_eq!(choose_bwd(128, 128, 2, H100.0, H100.1, true), Some(&BWD_HD128_M80_WGMMA_TMA));
        assert_eq!(choose_bwd(64, 64, 2, H100.0, H100.1, true), Some(&BWD_HD64_WGMMA_TMA));
        assert_eq!(choose_bwd(128, 128, 2, H100.0, H100.1, false), Some(&BWD_HD128_M32));
        assert_eq!(choose_bwd(128, 128, 2, A100.0, A100.1, false), Some(&BWD_HD128_M32));
        assert_eq!(choose_bwd(192, 192, 2, A100.0, A100.1, false), Some(&BWD_HD192_M32));
        assert_eq!(choose_bwd(80, 80, 2, H100.0, H100.1, true), None);
        assert_eq!(choose_bwd(128, 128, 4, H100.0, H100.1, true), None);
        assert_eq!(choose_bwd(128, 128, 2, 48 * KIB, 48 * KIB, true), None);
    }

    #[test]
    fn tma_rows_first_with_packed_kernels() {
        for (d, plain, tma) in [(64, BWD_HD64_WGMMA, BWD_HD64_WGMMA_TMA), (128, BWD_HD128_WGMMA, BWD_HD128_WGMMA_TMA)] {
            assert_eq!(BwdTile { tma: false, ..tma }.smem_bytes(2), plain.smem_bytes(2));
            assert_eq!((tma.block_m, tma.head_dim), (plain.block_m, d));
        }
        for t in BWD_TILES.iter().filter(|t| t.tma) {
            for (softcap, packed) in [(false, false), (true, false), (false, true), (true, true)] {
                assert_ne!(t.symbol(false, softcap, packed), "", "{t:?}");
                assert_ne!(t.symbol(true, softcap, packed), "", "{t:?}");
            }
        }
        for t in BWD_TILES.iter().filter(|t| t.wgmma) {
            // Every Hopper head dim has its TMA row first.
            assert_eq!(choose_bwd(t.head_dim, t.head_dim, 2, H100.0, H100.1, true).map(|t| t.tma), Some(true));
        }
    }

    #[test]
    fn value_head_dim_of_its_own() {
        for (dev, sm90a) in [(H100, false), (A100, false)] {
            assert_eq!(choose_bwd(192, 128, 2, dev.0, dev.1, sm90a), Some(&BWD_HD192_V128));
        }
        assert_eq!(choose_bwd(192, 128, 2, H100.0, H100.1, true), Some(&BWD_HD192_V128_WGMMA_TMA));
        // The Hopper row: K then V (64 rows of 192 and 128), stages of 48 KiB (the f32 dQ) holding Q
        // (24 KiB) and dO (16 KiB).
        let w = BWD_HD192_V128_WGMMA_TMA.wgmma_smem_layout(2);
        assert_eq!((w[1], w[2], w[3] - w[2]), (64 * 192 * 2, 64 * 320 * 2, 64 * 192 * 2));
        assert_eq!(BWD_HD192_V128_WGMMA_TMA.wgmma_stage_stride(2), 64 * 192 * 4);
        assert_eq!(w[4], w[2] + 2 * 64 * 192 * 4);
        for off in &w[..6] {
            assert_eq!(off % 1024, 0, "{w:?}");
        }
        assert_eq!(BWD_HD192_V128_WGMMA_TMA.wgmma_wide_regs_v(), [32, 0]);
        assert_eq!(choose_bwd(128, 64, 2, H100.0, H100.1, true), None);
        let l = BWD_HD192_V128.smem_layout(2);
        // K, V, two stages of Q, two of dO: V and dO rows are 136 elements.
        assert_eq!(l[1], 64 * 200 * 2);
        assert_eq!(l[2] - l[1], 64 * 136 * 2);
        assert_eq!(l[4] - l[3], 2 * 64 * 136 * 2);
        assert_eq!((BWD_HD192_V128.dkv_n_tiles(), BWD_HD192_V128.dv_n_tiles()), (12, 8));
        assert!(!BwdTile { head_dim_v: 64, ..BWD_HD128_WGMMA }.is_valid());
    }

    #[test]
    fn smem_arithmetic() {
        let l = BWD_HD128_M32.smem_layout(2);
        assert_eq!(l[1], 128 * 136 * 2);
        assert_eq!(l[9], 2 * 128 * 136 * 2 + 2 * 2 * 32 * 136 * 2 + 2 * 128 * 40 * 2 + 2 * 2 * 32 * 4 + 112);
        for t in BWD_TILES {
            for off in t.smem_layout(2) {
                assert_eq!(off % 16, 0, "{t:?}");
            }
        }
        // The Hopper kernel's swizzled tiles start on 1024-byte boundaries.
        let w = BWD_HD128_WGMMA.wgmma_smem_layout(2);
        for off in &w[..6] {
            assert_eq!(off % 1024, 0, "{w:?}");
        }
        assert_eq!(w[8] % 16, 0);
        assert_eq!(BWD_HD128_WGMMA.smem_bytes(2), 214_128 + 1024);
        // Head dim 32 stores its element tiles as 64 columns; its dQ staging is 32 f32 wide.
        let (w32, w64) = (BWD_HD32_WGMMA.wgmma_smem_layout(2), BWD_HD64_WGMMA.wgmma_smem_layout(2));
        assert_eq!(w32[..6], w64[..6]);
        assert_eq!(w64[6] - w64[5], 2 * 128 * 64 * 4);
        assert_eq!(w32[6] - w32[5], 2 * 128 * 32 * 4);
        for t in BWD_TILES.iter().filter(|t| t.wgmma) {
            assert!(t.smem_bytes(2) <= H100.0, "{t:?}");
        }
        assert_eq!(BWD_HD96_WGMMA.smem_bytes(2), BWD_HD128_WGMMA.smem_bytes(2) - 2 * 64 * 32 * 4);
        // 80-row blocks: dQ transposed, one staging buffer, dS untransposed (80 rows of 128 keys).
        let m80 = BWD_HD128_M80_WGMMA_TMA;
        assert!(m80.wgmma_dq_transposed() && !BWD_HD128_WGMMA.wgmma_dq_transposed());
        assert_eq!((m80.wgmma_dq_stages(), m80.wgmma_dq_regs(), BWD_HD128_WGMMA.wgmma_dq_regs()), (1, 40, 32));
        let w80 = m80.wgmma_smem_layout(2);
        assert_eq!((w80[5] - w80[4], w80[6] - w80[5]), (80 * 128 * 2, 80 * 128 * 4));
        for off in &w80[..6] {
            assert_eq!(off % 1024, 0, "{w80:?}");
        }
        assert!(m80.smem_bytes(2) <= H100.0 && !BwdTile { block_m: 80, ..BWD_HD64_WGMMA }.is_valid());
        assert_eq!(BWD_HD96_M80_WGMMA_TMA.smem_bytes(2), m80.smem_bytes(2) - 80 * 32 * 4);
        // dQ's column parts: halves, but 64 + 32 at head dim 96; rows at 128-row blocks.
        let parts = |t: BwdTile| (t.wgmma_dq_split(), t.wgmma_dq_cols());
        assert_eq!(parts(BWD_HD128_WGMMA), (64, 64));
        assert_eq!(parts(BWD_HD96_WGMMA), (64, 64));
        assert_eq!(BWD_HD64_WGMMA.wgmma_dq_cols(), 64);
        assert_eq!(BWD_HD32_WGMMA.wgmma_dq_cols(), 32);
        // Head dim 256: a stage's Q and dO adjacent, as many bytes as its f32 dQ staged over them.
        let wide = BWD_HD256_WGMMA_TMA;
        let l = wide.wgmma_smem_layout(2);
        assert!(wide.wgmma_splits_head_dim() && !BWD_HD128_M80_WGMMA_TMA.wgmma_splits_head_dim());
        assert_eq!((l[1], l[2], l[3] - l[2]), (64 * 256 * 2, 2 * 64 * 256 * 2, 64 * 256 * 2));
        assert_eq!(wide.wgmma_stage_stride(2), 64 * 256 * 4);
        assert_eq!(l[4], l[2] + 2 * wide.wgmma_stage_stride(2));
        for off in &l[..6] {
            assert_eq!(off % 1024, 0, "{l:?}");
        }
        assert!(wide.smem_bytes(2) <= H100.0 && wide.smem_bytes(2) > A100.0);
        assert!(!BwdTile { tma: false, ..wide }.is_valid() && !BwdTile { head_dim_v: 128, ..wide }.is_valid());
        let l192 = BWD_HD192_WGMMA_TMA.wgmma_smem_layout(2);
        assert_eq!((l192[3] - l192[2], BWD_HD192_WGMMA_TMA.wgmma_stage_stride(2)), (64 * 192 * 2, 64 * 192 * 4));
        for off in &l192[..6] {
            assert_eq!(off % 1024, 0, "{l192:?}");
        }
        // Each warpgroup's columns: half the head dim, as registers of dK (and dV, dQ).
        for t in [wide, BWD_HD192_WGMMA_TMA] {
            assert_eq!(4 * (t.wgmma_wide_regs()[0] + t.wgmma_wide_regs()[1]), t.head_dim);
        }
    }
}
