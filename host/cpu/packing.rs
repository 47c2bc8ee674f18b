//! Conversion of the inputs into the f32 tiles the microkernels read. K and V of one (batch, kv head)
//! are packed once and shared by every query block of the heads that use them, so that the
//! conversion and the strided reads of the caller's layout happen once per key, not once per
//! query block.

use super::microkernel::BLOCK_K;
use crate::dtype::Element;
use crate::tensor::HostTensor;
use rayon::prelude::*;

/// K and V of one (batch, kv head) in f32. V may have a head dim of its own (`head_dim_v`).
pub struct PackedKv {
    head_dim: usize,
    head_dim_v: usize,
    /// Kᵀ by key tile: `[tiles, head_dim, BLOCK_K]`; columns past the last key are 0.
    kt: Vec<f32>,
    /// `[seqlen_k, head_dim_v]`.
    v: Vec<f32>,
    /// For the backward (`for_backward`), else empty: Vᵀ by key tile `[tiles, head_dim_v, BLOCK_K]`
    /// (dP = dO Vᵀ) and K's rows `[seqlen_k, head_dim]` (dQ = dS K).
    vt: Vec<f32>,
    k: Vec<f32>,
}

impl PackedKv {
    pub fn new<T: Element>(k: &HostTensor<T>, v: &HostTensor<T>, b: usize, h: usize) -> Self {
        let (d, d_v) = (k.layout.head_dim(), v.layout.head_dim());
        let (kt, v) = (transposed_tiles(k, b, h), rows(v, b, h));
        PackedKv { head_dim: d, head_dim_v: d_v, kt, v, vt: Vec::new(), k: Vec::new() }
    }

    /// As `new`, with Vᵀ tiles and K's rows too, which the backward's products read.
    pub fn for_backward<T: Element>(k: &HostTensor<T>, v: &HostTensor<T>, b: usize, h: usize) -> Self {
        PackedKv { vt: transposed_tiles(v, b, h), k: rows(k, b, h), ..Self::new(k, v, b, h) }
    }

    /// Kᵀ `[head_dim, BLOCK_K]` of the keys from `first_key` (a multiple of `BLOCK_K`).
    pub fn kt_tile(&self, first_key: usize) -> &[f32] {
        let size = self.head_dim * BLOCK_K;
        &self.kt[first_key / BLOCK_K * size..][..size]
    }

    /// V `[keys, head_dim_v]` of the keys from `first_key`.
    pub fn v_rows(&self, first_key: usize, keys: usize) -> &[f32] {
        &self.v[first_key * self.head_dim_v..][..keys * self.head_dim_v]
    }

    /// Vᵀ `[head_dim_v, BLOCK_K]` of the keys from `first_key` (packed `for_backward`).
    pub fn vt_tile(&self, first_key: usize) -> &[f32] {
        let size = self.head_dim_v * BLOCK_K;
        &self.vt[first_key / BLOCK_K * size..][..size]
    }

    /// K `[keys, head_dim]` of the keys from `first_key` (packed `for_backward`).
    pub fn k_rows(&self, first_key: usize, keys: usize) -> &[f32] {
        &self.k[first_key * self.head_dim..][..keys * self.head_dim]
    }
}

/// Every sequence row of head `h` in batch `b`, transposed by key tile: `[tiles, head_dim, BLOCK_K]`,
/// columns past the last row 0.
fn transposed_tiles<T: Element>(t: &HostTensor<T>, b: usize, h: usize) -> Vec<f32> {
    let (seqlen, d) = (t.layout.seqlen(), t.layout.head_dim());
    let mut tiles = vec![0.0f32; seqlen.div_ceil(BLOCK_K) * d * BLOCK_K];
    tiles.par_chunks_mut(d * BLOCK_K).enumerate().for_each(|(tile, out)| {
        let first = tile * BLOCK_K;
        fill_transposed(out, t, b, h, first, BLOCK_K.min(seqlen - first));
    });
    tiles
}

/// Every sequence row of head `h` in batch `b`, `[seqlen, head_dim]`.
fn rows<T: Element>(t: &HostTensor<T>, b: usize, h: usize) -> Vec<f32> {
    let (seqlen, d) = (t.layout.seqlen(), t.layout.head_dim());
    let mut rows = vec![0.0f32; seqlen * d];
    rows.par_chunks_mut(BLOCK_K * d).enumerate().for_each(|(tile, out)| fill_rows(out, t, b, h, tile * BLOCK_K));
    rows
}

/// `rows` consecutive sequence rows of head `h` in batch `b`, as contiguous f32 `[rows, head_dim]`.
pub fn load_rows<T: Element>(t: &HostTensor<T>, b: usize, h: usize, first: usize, rows: usize) -> Vec<f32> {
    let mut tile = vec![0.0f32; rows * t.layout.head_dim()];
    fill_rows(&mut tile, t, b, h, first);
    tile
}

/// Fills `tile` (`[rows, head_dim]` f32) from consecutive sequence rows starting at `first`.
fn fill_rows<T: Element>(tile: &mut [f32], t: &HostTensor<T>, b: usize, h: usize, first: usize) {
    let d = t.layout.head_dim();
    for (i, row) in tile.chunks_exact_mut(d).enumerate() {
        let start = t.layout.offset(b, first + i, h, 0);
        for (dst, src) in row.iter_mut().zip(&t.data[start..start + d]) {
            *dst = src.to_f32();
        }
    }
}

/// Fills Kᵀ `[head_dim, BLOCK_K]` with `keys` consecutive sequence rows starting at `first`.
fn fill_transposed<T: Element>(kt: &mut [f32], t: &HostTensor<T>, b: usize, h: usize, first: usize, keys: usize) {
    let d = t.layout.head_dim();
    for c in 0..keys {
        let start = t.layout.offset(b, first + c, h, 0);
        for (kt_row, x) in kt.chunks_exact_mut(BLOCK_K).zip(&t.data[start..start + d]) {
            kt_row[c] = x.to_f32();
        }
    }
}
