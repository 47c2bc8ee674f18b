//! The accumulator fragment every kernel's score stage works on.
//!
//! `mma.sync.m16n8k16` leaves a warp's `16·MT x 8·NN` f32 tile with lane (g, t) (g = lane/4, t = lane%4)
//! holding, of m16 tile m and n8 tile n, rows `16m + g` and `16m + g + 8` at columns `8n + 2t` and
//! `8n + 2t + 1`: `x[m][n] = [(g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)]` (PTX ISA §9.7.14.5.8).
//! A `wgmma.m64nNk16` accumulator gives each warp of the warpgroup 16 rows in the same pattern, its
//! `N/2` registers in the same order (register `4n + 2r + c` is row `g + 8r`, column `8n + 2t + c`; PTX
//! ISA §9.7.15.5.1), so it converts to an `AccFrag<1, N/8>` by moving registers, not by reinterpreting
//! memory.

/// A warp's f32 accumulator tile in the m16n8 layout (see the module docs).
#[derive(Clone, Copy)]
pub struct AccFrag<const MT: usize, const NN: usize>(pub [[[f32; 4]; NN]; MT]);

impl<const MT: usize, const NN: usize> AccFrag<MT, NN> {
    #[inline(always)]
    pub fn zeros() -> Self {
        AccFrag([[[0.0; 4]; NN]; MT])
    }
}

impl<const NN: usize> AccFrag<1, NN> {
    /// A warp's part of a `wgmma` m64n(8·NN) accumulator (`R = 4·NN` registers).
    #[inline(always)]
    pub fn from_wgmma<const R: usize>(regs: &[f32; R]) -> Self {
        const { assert!(R == 4 * NN) };
        let mut f = Self::zeros();
        for (n, tile) in f.0[0].iter_mut().enumerate() {
            for (e, x) in tile.iter_mut().enumerate() {
                *x = regs[4 * n + e];
            }
        }
        f
    }

    /// Back into the `wgmma` register order.
    #[inline(always)]
    pub fn to_wgmma<const R: usize>(&self, regs: &mut [f32; R]) {
        const { assert!(R == 4 * NN) };
        for (n, tile) in self.0[0].iter().enumerate() {
            for (e, &x) in tile.iter().enumerate() {
                regs[4 * n + e] = x;
            }
        }
    }
}
