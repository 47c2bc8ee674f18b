//! Warp-level data exchange and votes (PTX ISA §9.7.8.6 `shfl.sync`, §9.7.8.5 `vote.sync`). All 32
//! lanes must execute each call.

/// `shfl.sync.bfly`: value of lane `lane ^ xor_mask`.
#[inline(always)]
pub fn shfl_xor_f32(x: f32, xor_mask: u32) -> f32 {
    let out: f32;
    // SAFETY: full-warp mask; every ironflash caller runs it with the whole warp converged.
    unsafe {
        core::arch::asm!(
            "shfl.sync.bfly.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;",
            out(reg32) out, in(reg32) x, in(reg32) xor_mask,
            options(nomem, nostack, preserves_flags)
        )
    };
    out
}

/// `vote.sync.any.pred`: whether `pred` holds in any lane (the answer in every lane).
#[inline(always)]
pub fn any(pred: bool) -> bool {
    let out: u32;
    // SAFETY: full-warp mask; every ironflash caller runs it with the whole warp converged.
    unsafe {
        core::arch::asm!(
            "{{ .reg .pred p, q; setp.ne.u32 p, {1}, 0; vote.sync.any.pred q, p, 0xffffffff; selp.u32 {0}, 1, 0, q; }}",
            out(reg32) out, in(reg32) pred as u32,
            options(nomem, nostack, preserves_flags)
        )
    };
    out != 0
}

/// `vote.sync.ballot.b32`: bit i set where `pred` holds in lane i (the answer in every lane).
#[inline(always)]
pub fn ballot(pred: bool) -> u32 {
    let out: u32;
    // SAFETY: full-warp mask; every ironflash caller runs it with the whole warp converged.
    unsafe {
        core::arch::asm!(
            "{{ .reg .pred p; setp.ne.u32 p, {1}, 0; vote.sync.ballot.b32 {0}, p, 0xffffffff; }}",
            out(reg32) out, in(reg32) pred as u32,
            options(nomem, nostack, preserves_flags)
        )
    };
    out
}

/// Maximum over the warp (result in every lane).
#[inline(always)]
pub fn warp_max(mut x: f32) -> f32 {
    let mut m = 16;
    while m > 0 {
        x = x.max(shfl_xor_f32(x, m));
        m /= 2;
    }
    x
}

/// Sum over the warp (result in every lane).
#[inline(always)]
pub fn warp_sum(mut x: f32) -> f32 {
    let mut m = 16;
    while m > 0 {
        x += shfl_xor_f32(x, m);
        m /= 2;
    }
    x
}
