//! Special registers (PTX ISA §10 "Special Registers"): thread, block and grid indices.

macro_rules! sreg {
    ($name:ident, $reg:literal) => {
        #[inline(always)]
        pub fn $name() -> u32 {
            let v: u32;
            // SAFETY: reading a special register has no side effects.
            unsafe { core::arch::asm!(concat!("mov.u32 {0}, ", $reg, ";"), out(reg32) v, options(pure, nomem, nostack)) };
            v
        }
    };
}

sreg!(thread_x, "%tid.x");
sreg!(block_x, "%ctaid.x");
sreg!(block_y, "%ctaid.y");
sreg!(block_z, "%ctaid.z");
sreg!(block_dim_x, "%ntid.x");
sreg!(grid_dim_x, "%nctaid.x");
sreg!(grid_dim_y, "%nctaid.y");
sreg!(grid_dim_z, "%nctaid.z");
sreg!(lane, "%laneid");

/// The block indices re-read where they are used: not `pure`, so the optimiser neither hoists nor
/// merges the reads, and no register holds the value through a loop that needs it once per block
/// (see `ptx::opaque`).
pub mod fresh {
    macro_rules! fresh_sreg {
        ($name:ident, $reg:literal) => {
            #[inline(always)]
            pub fn $name() -> u32 {
                let v: u32;
                // SAFETY: reading a special register has no side effects.
                unsafe { core::arch::asm!(concat!("mov.u32 {0}, ", $reg, ";"), out(reg32) v, options(nomem, nostack)) };
                v
            }
        };
    }
    fresh_sreg!(block_y, "%ctaid.y");
    fresh_sreg!(block_z, "%ctaid.z");
}

/// Warp index within the block (threads are numbered along x only in ironflash kernels).
#[inline(always)]
pub fn warp() -> u32 {
    thread_x() / 32
}
