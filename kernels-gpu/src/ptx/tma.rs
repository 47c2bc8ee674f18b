//! TMA tensor copies (PTX ISA §9.7.9.25.5.1 `cp.async.bulk.tensor`, §9.7.9.26 `prefetch.tensormap`): one
//! instruction moves a box of a tensor described by a tensor map (`abi::FwdTensorMaps`) into shared
//! memory, swizzled as the map says, zero-filling what lies outside the tensor, and reports its bytes on
//! an `mbarrier`. Only in the `sm_90a` build.

/// `prefetch.tensormap` by the threads with `leader` set (predicated, as `load_4d`): brings the tensor
/// map at generic address `map` into the TMA unit's cache before the first copy needs it.
///
/// # Safety
/// `map` is the generic address of a tensor map in the parameter, constant or global space.
#[inline(always)]
pub unsafe fn prefetch_map(leader: bool, map: u64) {
    core::arch::asm!(
        "{{ .reg .pred p; setp.ne.u32 p, {0}, 0; @p prefetch.tensormap [{1}]; }}",
        in(reg32) leader as u32, in(reg64) map,
        options(nostack)
    );
}

/// `cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes` by the threads with
/// `leader` set (predicated inside the instruction, as `mbarrier::init`, so that the issuing thread
/// takes no branch of its own): the box of the 4-D tensor map `map` at element coordinates `c`
/// (innermost first) into shared memory at `dst`; its bytes (the whole box, zero-filled parts included)
/// complete on barrier `bar`.
///
/// # Safety
/// `map` as in `prefetch_map`; `dst` is a shared address aligned as the map's swizzle requires (1024
/// bytes for the 128-byte swizzle) with room for the box; `bar` is an initialised barrier whose
/// current phase expects these bytes (`mbarrier::arrive_expect_tx`); nothing reads `dst` before the
/// phase completes or writes it while the copy runs.
#[inline(always)]
pub unsafe fn load_4d(leader: bool, dst: u32, map: u64, c: [u32; 4], bar: u32) {
    core::arch::asm!(
        "{{ .reg .pred p; setp.ne.u32 p, {0}, 0;",
        "@p cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [{1}], [{2}, {{{3}, {4}, {5}, {6}}}], [{7}]; }}",
        in(reg32) leader as u32, in(reg32) dst, in(reg64) map, in(reg32) c[0], in(reg32) c[1], in(reg32) c[2], in(reg32) c[3], in(reg32) bar,
        options(nostack)
    );
}

/// One `ROWS x COLS` tile of the 4-D map `map` (`[dim, rows, heads, batch]`, boxes of 64 elements ×
/// `ROWS`, 128-byte swizzled), from row `row0` of `head` in `batch`, into shared memory at `dst` in the
/// `wgmma` layout: one box per 64-column block, each `ROWS · 128` bytes after the last, issued by the
/// `leader` thread against barrier `bar`. A `COLS` that is not a multiple of 64 (head dims 32 and 96)
/// takes whole boxes, the columns past the tensor's filled with zeros.
///
/// # Safety
/// As `load_4d` for each box; `bar`'s current phase expects the tile's bytes among others.
#[inline(always)]
pub unsafe fn load_tile<const ROWS: usize, const COLS: usize>(
    leader: bool,
    dst: u32,
    map: u64,
    [row0, head, batch]: [u32; 3],
    bar: u32,
) {
    for cb in 0..COLS.div_ceil(64) {
        load_4d(leader, dst + (cb * ROWS * 128) as u32, map, [64 * cb as u32, row0, head, batch], bar);
    }
}

/// One `ROWS x COLS` tile of one-byte elements (the FP8 maps) in boxes of `box_bytes` columns (128, or
/// 64 for a 64-wide tile: the map's swizzle span), each `ROWS · box_bytes` bytes after the last.
///
/// # Safety
/// As [`load_tile`].
#[inline(always)]
pub unsafe fn load_boxes_of<const ROWS: usize, const COLS: usize>(
    leader: bool,
    dst: u32,
    box_bytes: usize,
    map: u64,
    [row0, head, batch]: [u32; 3],
    bar: u32,
) {
    for cb in 0..COLS / box_bytes {
        let at = [(box_bytes * cb) as u32, row0, head, batch];
        load_4d(leader, dst + (cb * ROWS * box_bytes) as u32, map, at, bar);
    }
}

/// The generic address of kernel `$entry`'s second parameter (its tensor maps), which is where TMA reads
/// a kernel parameter's tensor map: the parameter's address in the parameter space, made generic (PTX ISA
/// §9.7.9.21 `cvta`). Used inside `$entry`, whose build.rs `ironflash-param-align` comment puts that
/// parameter on a 64-byte boundary.
macro_rules! maps_param_address {
    ($entry:ident) => {{
        let maps: u64;
        // SAFETY: reads no memory; names a parameter of the kernel it is expanded in.
        unsafe {
            core::arch::asm!(
                concat!("mov.u64 {0}, ", stringify!($entry), "_param_1;"),
                "cvta.param.u64 {0}, {0};",
                out(reg64) maps,
                options(pure, nomem, nostack)
            )
        };
        maps
    }};
}
pub(crate) use maps_param_address;
