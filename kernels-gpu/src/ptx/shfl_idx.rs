//! Indexed warp shuffle (PTX ISA §9.7.8.6 `shfl.sync` with `.idx`). All 32 lanes must execute each call.

/// `shfl.sync.idx.b32`: the value `x` of lane `src` (0..32).
#[inline(always)]
pub fn shfl_idx_f32(x: f32, src: u32) -> f32 {
    let out: f32;
    // SAFETY: full-warp mask; every ironflash caller runs it with the whole warp converged.
    unsafe {
        core::arch::asm!(
            "shfl.sync.idx.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;",
            out(reg32) out, in(reg32) x, in(reg32) src,
            options(nomem, nostack, preserves_flags)
        )
    };
    out
}
