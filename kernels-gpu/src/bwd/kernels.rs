//! Kernel entry points of the backward: one main kernel per row of `tiles_bwd::BWD_TILES` and element
//! type (parameters taken from the row; a compile-time check ties the host's symbol names to these
//! functions), plus the delta and dQ-convert kernels per element type.

use super::mainloop::attn_bwd;
use super::prep;
use crate::abi::{self, BwdParams};
use crate::ptx::elem::{Bf16, F16};
use crate::tiles::str_eq;
use crate::tiles_bwd::{self, BwdTile};

macro_rules! bwd_kernel {
    ($tile:path, $elem:ty, $softcap:literal, $packed:literal, $p:expr) => {{
        const T: BwdTile = $tile;
        attn_bwd::<
            $elem,
            { T.head_dim },
            { T.head_dim_v },
            { T.block_m },
            { T.block_n },
            { T.warps },
            { T.q_stages },
            { T.sdp_warps_n },
            { T.sdp_m_tiles() },
            { T.sdp_n_tiles() },
            { T.dkv_warps_n },
            { T.dkv_m_tiles() },
            { T.dkv_n_tiles() },
            { T.dv_n_tiles() },
            { T.dq_warps_m },
            { T.dq_m_tiles() },
            { T.dq_n_tiles() },
            $softcap,
            $packed,
        >($p)
    }};
}

/// One row's eight kernels: bf16 and f16, without and with a softcap, dense and packed (the symbols in
/// the row's order: `symbols`, `softcap_symbols`, `packed_symbols`, `packed_softcap_symbols`).
macro_rules! bwd_kernels {
    ($($tile:path => [$($name:ident),*];)*) => {$(
        bwd_kernels!(@row $tile, [$($name),*]);
    )*};
    (@row $tile:path, [$bf16:ident, $f16:ident, $cap_bf16:ident, $cap_f16:ident,
                       $var_bf16:ident, $var_f16:ident, $var_cap_bf16:ident, $var_cap_f16:ident]) => {
        const _: () = {
            const T: BwdTile = $tile;
            assert!(T.is_valid());
            assert!(T.names_are([
                stringify!($bf16), stringify!($f16), stringify!($cap_bf16), stringify!($cap_f16),
                stringify!($var_bf16), stringify!($var_f16), stringify!($var_cap_bf16), stringify!($var_cap_f16),
            ]));
        };
        bwd_entry!($tile, Bf16, false, false, $bf16, "Launched as `abi::BwdParams` and the tile row document.");
        bwd_entry!($tile, F16, false, false, $f16, "As the bf16 kernel.");
        bwd_entry!($tile, Bf16, true, false, $cap_bf16, "As the bf16 kernel, with a softcap.");
        bwd_entry!($tile, F16, true, false, $cap_f16, "As the bf16 kernel, with a softcap.");
        bwd_entry!($tile, Bf16, false, true, $var_bf16, "As the bf16 kernel, for a packed batch.");
        bwd_entry!($tile, F16, false, true, $var_f16, "As the bf16 kernel, for a packed batch.");
        bwd_entry!($tile, Bf16, true, true, $var_cap_bf16, "As the bf16 kernel, for a packed batch with a softcap.");
        bwd_entry!($tile, F16, true, true, $var_cap_f16, "As the bf16 kernel, for a packed batch with a softcap.");
    };
}

macro_rules! bwd_entry {
    ($tile:path, $elem:ty, $softcap:literal, $packed:literal, $name:ident, $safety:literal) => {
        /// # Safety
        #[doc = $safety]
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $name(p: BwdParams) {
            bwd_kernel!($tile, $elem, $softcap, $packed, &p)
        }
    };
}

bwd_kernels! {
    tiles_bwd::BWD_HD32 => [attn_bwd_hd32_m64n128s2_bf16, attn_bwd_hd32_m64n128s2_f16, attn_bwd_softcap_hd32_m64n128s2_bf16, attn_bwd_softcap_hd32_m64n128s2_f16,
        attn_bwd_varlen_hd32_m64n128s2_bf16, attn_bwd_varlen_hd32_m64n128s2_f16, attn_bwd_varlen_softcap_hd32_m64n128s2_bf16, attn_bwd_varlen_softcap_hd32_m64n128s2_f16];
    tiles_bwd::BWD_HD64 => [attn_bwd_hd64_m64n128s2_bf16, attn_bwd_hd64_m64n128s2_f16, attn_bwd_softcap_hd64_m64n128s2_bf16, attn_bwd_softcap_hd64_m64n128s2_f16,
        attn_bwd_varlen_hd64_m64n128s2_bf16, attn_bwd_varlen_hd64_m64n128s2_f16, attn_bwd_varlen_softcap_hd64_m64n128s2_bf16, attn_bwd_varlen_softcap_hd64_m64n128s2_f16];
    tiles_bwd::BWD_HD96 => [attn_bwd_hd96_m64n128s2_bf16, attn_bwd_hd96_m64n128s2_f16, attn_bwd_softcap_hd96_m64n128s2_bf16, attn_bwd_softcap_hd96_m64n128s2_f16,
        attn_bwd_varlen_hd96_m64n128s2_bf16, attn_bwd_varlen_hd96_m64n128s2_f16, attn_bwd_varlen_softcap_hd96_m64n128s2_bf16, attn_bwd_varlen_softcap_hd96_m64n128s2_f16];
    tiles_bwd::BWD_HD128_M32 => [attn_bwd_hd128_m32n128s2_bf16, attn_bwd_hd128_m32n128s2_f16, attn_bwd_softcap_hd128_m32n128s2_bf16, attn_bwd_softcap_hd128_m32n128s2_f16,
        attn_bwd_varlen_hd128_m32n128s2_bf16, attn_bwd_varlen_hd128_m32n128s2_f16, attn_bwd_varlen_softcap_hd128_m32n128s2_bf16, attn_bwd_varlen_softcap_hd128_m32n128s2_f16];
    tiles_bwd::BWD_HD192 => [attn_bwd_hd192_m64n64s2_bf16, attn_bwd_hd192_m64n64s2_f16, attn_bwd_softcap_hd192_m64n64s2_bf16, attn_bwd_softcap_hd192_m64n64s2_f16,
        attn_bwd_varlen_hd192_m64n64s2_bf16, attn_bwd_varlen_hd192_m64n64s2_f16, attn_bwd_varlen_softcap_hd192_m64n64s2_bf16, attn_bwd_varlen_softcap_hd192_m64n64s2_f16];
    tiles_bwd::BWD_HD192_M32 => [attn_bwd_hd192_m32n64s2_bf16, attn_bwd_hd192_m32n64s2_f16, attn_bwd_softcap_hd192_m32n64s2_bf16, attn_bwd_softcap_hd192_m32n64s2_f16,
        attn_bwd_varlen_hd192_m32n64s2_bf16, attn_bwd_varlen_hd192_m32n64s2_f16, attn_bwd_varlen_softcap_hd192_m32n64s2_bf16, attn_bwd_varlen_softcap_hd192_m32n64s2_f16];
    tiles_bwd::BWD_HD256 => [attn_bwd_hd256_m32n64s2_bf16, attn_bwd_hd256_m32n64s2_f16, attn_bwd_softcap_hd256_m32n64s2_bf16, attn_bwd_softcap_hd256_m32n64s2_f16,
        attn_bwd_varlen_hd256_m32n64s2_bf16, attn_bwd_varlen_hd256_m32n64s2_f16, attn_bwd_varlen_softcap_hd256_m32n64s2_bf16, attn_bwd_varlen_softcap_hd256_m32n64s2_f16];
    tiles_bwd::BWD_HD192_V128 => [attn_bwd_hd192v128_m64n64s2_bf16, attn_bwd_hd192v128_m64n64s2_f16, attn_bwd_softcap_hd192v128_m64n64s2_bf16, attn_bwd_softcap_hd192v128_m64n64s2_f16,
        attn_bwd_varlen_hd192v128_m64n64s2_bf16, attn_bwd_varlen_hd192v128_m64n64s2_f16, attn_bwd_varlen_softcap_hd192v128_m64n64s2_bf16, attn_bwd_varlen_softcap_hd192v128_m64n64s2_f16];
}

/// The Hopper kernels (`hopper.rs`), in the sm_90a PTX only: one per `wgmma` row of the table.
#[cfg(target_feature = "sm_90a")]
mod wgmma_entry {
    use super::super::hopper::attn_bwd_wgmma;
    use super::super::hopper_wide::attn_bwd_wgmma_wide;
    use crate::abi::{BwdParams, BwdTensorMaps};
    use crate::ptx::elem::{Bf16, F16};
    use crate::tiles_bwd::{self, BwdTile};

    macro_rules! wgmma_kernel {
        ($tile:path, $elem:ty, $softcap:literal, $packed:literal, $p:expr, $maps:expr) => {{
            const T: BwdTile = $tile;
            attn_bwd_wgmma::<
                $elem,
                { T.head_dim },
                { T.block_m },
                { T.head_dim / 2 },
                { T.block_m / 2 },
                { T.block_m / 4 },
                { T.block_m / 8 },
                { T.wgmma_dq_regs() },
                $softcap,
                $packed,
                { T.tma },
            >($p, $maps)
        }};
    }

    /// One row's eight kernels, as `bwd_kernels!` (the same order of symbols), each defined by `$entry`
    /// (`wgmma_entry`, or `wgmma_tma_entry` for the rows whose `tma` is `$tma`) around the kernel body
    /// `$body` (`wgmma_kernel`, or `wide_kernel` for the head-dim split rows).
    macro_rules! wgmma_kernels {
        ($entry:ident, $body:ident, $tma:literal; $($tile:path => [$($name:ident),*];)*) => {$(
            wgmma_kernels!(@row $entry, $body, $tma, $tile, [$($name),*]);
        )*};
        (@row $entry:ident, $body:ident, $tma:literal, $tile:path, [$bf16:ident, $f16:ident, $cap_bf16:ident, $cap_f16:ident,
                           $var_bf16:ident, $var_f16:ident, $var_cap_bf16:ident, $var_cap_f16:ident]) => {
            const _: () = {
                const T: BwdTile = $tile;
                assert!(T.is_valid() && T.wgmma && T.tma == $tma && T.threads() == 384);
                assert!(T.names_are([
                    stringify!($bf16), stringify!($f16), stringify!($cap_bf16), stringify!($cap_f16),
                    stringify!($var_bf16), stringify!($var_f16), stringify!($var_cap_bf16), stringify!($var_cap_f16),
                ]));
            };
            $entry!($body, $tile, Bf16, false, false, $bf16, "Launched as `abi::BwdParams` and the tile row document, on a compute capability 9.0 device.");
            $entry!($body, $tile, F16, false, false, $f16, "As the bf16 kernel.");
            $entry!($body, $tile, Bf16, true, false, $cap_bf16, "As the bf16 kernel, with a softcap.");
            $entry!($body, $tile, F16, true, false, $cap_f16, "As the bf16 kernel, with a softcap.");
            $entry!($body, $tile, Bf16, false, true, $var_bf16, "As the bf16 kernel, for a packed batch.");
            $entry!($body, $tile, F16, false, true, $var_f16, "As the bf16 kernel, for a packed batch.");
            $entry!($body, $tile, Bf16, true, true, $var_cap_bf16, "As the bf16 kernel, for a packed batch with a softcap.");
            $entry!($body, $tile, F16, true, true, $var_cap_f16, "As the bf16 kernel, for a packed batch with a softcap.");
        };
    }

    /// Launch bounds (build.rs turns the marker into `.maxntid 384, 1, 1` and `.minnctapersm 1`): ptxas
    /// then compiles for one CTA of 12 warps per SM (168 registers per thread at launch), which
    /// `setmaxnreg` redistributes to the compute warpgroups (see `hopper.rs`).
    macro_rules! wgmma_entry {
        ($body:ident, $tile:path, $elem:ty, $softcap:literal, $packed:literal, $name:ident, $safety:literal) => {
            core::arch::global_asm!(concat!("// ironflash-launch-bounds ", stringify!($name), " 384 1"));

            /// # Safety
            #[doc = $safety]
            #[no_mangle]
            pub unsafe extern "ptx-kernel" fn $name(p: BwdParams) {
                $body!($tile, $elem, $softcap, $packed, &p, 0)
            }
        };
    }

    /// A TMA row's kernel: a second parameter, the tensor maps, whose parameter-space address the kernel
    /// hands to the TMA unit (as the forward's TMA rows).
    macro_rules! wgmma_tma_entry {
        ($body:ident, $tile:path, $elem:ty, $softcap:literal, $packed:literal, $name:ident, $safety:literal) => {
            core::arch::global_asm!(concat!("// ironflash-launch-bounds ", stringify!($name), " 384 1"));
            core::arch::global_asm!(concat!("// ironflash-param-align ", stringify!($name), " 1 64"));

            /// # Safety
            #[doc = $safety]
            /// With `maps` the tensor maps of the call's Q and dO.
            #[no_mangle]
            pub unsafe extern "ptx-kernel" fn $name(p: BwdParams, _maps: BwdTensorMaps) {
                let maps = crate::ptx::tma::maps_param_address!($name);
                $body!($tile, $elem, $softcap, $packed, &p, maps)
            }
        };
    }

    /// A head-dim split row's kernel body (`hopper_wide.rs`; TMA rows only, defined by
    /// `wgmma_tma_entry`), as `wgmma_kernel!` is the other rows'.
    macro_rules! wide_kernel {
        ($tile:path, $elem:ty, $softcap:literal, $packed:literal, $p:expr, $maps:expr) => {{
            const T: BwdTile = $tile;
            const { assert!(T.wgmma_splits_head_dim()) };
            const R: [usize; 2] = T.wgmma_wide_regs();
            const V: [usize; 2] = T.wgmma_wide_regs_v();
            attn_bwd_wgmma_wide::<
                $elem,
                { T.head_dim },
                { T.head_dim_v },
                { R[0] },
                { R[1] },
                { V[0] },
                { V[1] },
                $softcap,
                $packed,
            >($p, $maps)
        }};
    }

    wgmma_kernels! { wgmma_entry, wgmma_kernel, false;
        tiles_bwd::BWD_HD32_WGMMA => [attn_bwd_hd32_m128n128_wgmma_bf16, attn_bwd_hd32_m128n128_wgmma_f16, attn_bwd_softcap_hd32_m128n128_wgmma_bf16, attn_bwd_softcap_hd32_m128n128_wgmma_f16,
            attn_bwd_varlen_hd32_m128n128_wgmma_bf16, attn_bwd_varlen_hd32_m128n128_wgmma_f16, attn_bwd_varlen_softcap_hd32_m128n128_wgmma_bf16, attn_bwd_varlen_softcap_hd32_m128n128_wgmma_f16];
        tiles_bwd::BWD_HD64_WGMMA => [attn_bwd_hd64_m128n128_wgmma_bf16, attn_bwd_hd64_m128n128_wgmma_f16, attn_bwd_softcap_hd64_m128n128_wgmma_bf16, attn_bwd_softcap_hd64_m128n128_wgmma_f16,
            attn_bwd_varlen_hd64_m128n128_wgmma_bf16, attn_bwd_varlen_hd64_m128n128_wgmma_f16, attn_bwd_varlen_softcap_hd64_m128n128_wgmma_bf16, attn_bwd_varlen_softcap_hd64_m128n128_wgmma_f16];
        tiles_bwd::BWD_HD96_WGMMA => [attn_bwd_hd96_m64n128_wgmma_bf16, attn_bwd_hd96_m64n128_wgmma_f16, attn_bwd_softcap_hd96_m64n128_wgmma_bf16, attn_bwd_softcap_hd96_m64n128_wgmma_f16,
            attn_bwd_varlen_hd96_m64n128_wgmma_bf16, attn_bwd_varlen_hd96_m64n128_wgmma_f16, attn_bwd_varlen_softcap_hd96_m64n128_wgmma_bf16, attn_bwd_varlen_softcap_hd96_m64n128_wgmma_f16];
        tiles_bwd::BWD_HD128_WGMMA => [attn_bwd_hd128_m64n128_wgmma_bf16, attn_bwd_hd128_m64n128_wgmma_f16, attn_bwd_softcap_hd128_m64n128_wgmma_bf16, attn_bwd_softcap_hd128_m64n128_wgmma_f16,
            attn_bwd_varlen_hd128_m64n128_wgmma_bf16, attn_bwd_varlen_hd128_m64n128_wgmma_f16, attn_bwd_varlen_softcap_hd128_m64n128_wgmma_bf16, attn_bwd_varlen_softcap_hd128_m64n128_wgmma_f16];
    }

    wgmma_kernels! { wgmma_tma_entry, wgmma_kernel, true;
        tiles_bwd::BWD_HD32_WGMMA_TMA => [attn_bwd_hd32_m128n128_wgmma_tma_bf16, attn_bwd_hd32_m128n128_wgmma_tma_f16,
            attn_bwd_softcap_hd32_m128n128_wgmma_tma_bf16, attn_bwd_softcap_hd32_m128n128_wgmma_tma_f16,
            attn_bwd_varlen_hd32_m128n128_wgmma_tma_bf16, attn_bwd_varlen_hd32_m128n128_wgmma_tma_f16,
            attn_bwd_varlen_softcap_hd32_m128n128_wgmma_tma_bf16, attn_bwd_varlen_softcap_hd32_m128n128_wgmma_tma_f16];
        tiles_bwd::BWD_HD96_WGMMA_TMA => [attn_bwd_hd96_m64n128_wgmma_tma_bf16, attn_bwd_hd96_m64n128_wgmma_tma_f16,
            attn_bwd_softcap_hd96_m64n128_wgmma_tma_bf16, attn_bwd_softcap_hd96_m64n128_wgmma_tma_f16,
            attn_bwd_varlen_hd96_m64n128_wgmma_tma_bf16, attn_bwd_varlen_hd96_m64n128_wgmma_tma_f16,
            attn_bwd_varlen_softcap_hd96_m64n128_wgmma_tma_bf16, attn_bwd_varlen_softcap_hd96_m64n128_wgmma_tma_f16];
        tiles_bwd::BWD_HD64_WGMMA_TMA => [attn_bwd_hd64_m128n128_wgmma_tma_bf16, attn_bwd_hd64_m128n128_wgmma_tma_f16,
            attn_bwd_softcap_hd64_m128n128_wgmma_tma_bf16, attn_bwd_softcap_hd64_m128n128_wgmma_tma_f16,
            attn_bwd_varlen_hd64_m128n128_wgmma_tma_bf16, attn_bwd_varlen_hd64_m128n128_wgmma_tma_f16,
            attn_bwd_varlen_softcap_hd64_m128n128_wgmma_tma_bf16, attn_bwd_varlen_softcap_hd64_m128n128_wgmma_tma_f16];
        tiles_bwd::BWD_HD128_WGMMA_TMA => [attn_bwd_hd128_m64n128_wgmma_tma_bf16, attn_bwd_hd128_m64n128_wgmma_tma_f16,
            attn_bwd_softcap_hd128_m64n128_wgmma_tma_bf16, attn_bwd_softcap_hd128_m64n128_wgmma_tma_f16,
            attn_bwd_varlen_hd128_m64n128_wgmma_tma_bf16, attn_bwd_varlen_hd128_m64n128_wgmma_tma_f16,
            attn_bwd_varlen_softcap_hd128_m64n128_wgmma_tma_bf16, attn_bwd_varlen_softcap_hd128_m64n128_wgmma_tma_f16];
        tiles_bwd::BWD_HD96_M80_WGMMA_TMA => [attn_bwd_hd96_m80n128_wgmma_tma_bf16, attn_bwd_hd96_m80n128_wgmma_tma_f16,
            attn_bwd_softcap_hd96_m80n128_wgmma_tma_bf16, attn_bwd_softcap_hd96_m80n128_wgmma_tma_f16,
            attn_bwd_varlen_hd96_m80n128_wgmma_tma_bf16, attn_bwd_varlen_hd96_m80n128_wgmma_tma_f16,
            attn_bwd_varlen_softcap_hd96_m80n128_wgmma_tma_bf16, attn_bwd_varlen_softcap_hd96_m80n128_wgmma_tma_f16];
        tiles_bwd::BWD_HD128_M80_WGMMA_TMA => [attn_bwd_hd128_m80n128_wgmma_tma_bf16, attn_bwd_hd128_m80n128_wgmma_tma_f16,
            attn_bwd_softcap_hd128_m80n128_wgmma_tma_bf16, attn_bwd_softcap_hd128_m80n128_wgmma_tma_f16,
            attn_bwd_varlen_hd128_m80n128_wgmma_tma_bf16, attn_bwd_varlen_hd128_m80n128_wgmma_tma_f16,
            attn_bwd_varlen_softcap_hd128_m80n128_wgmma_tma_bf16, attn_bwd_varlen_softcap_hd128_m80n128_wgmma_tma_f16];
    }

    wgmma_kernels! { wgmma_tma_entry, wide_kernel, true;
        tiles_bwd::BWD_HD192_WGMMA_TMA => [attn_bwd_hd192_m64n64_wgmma_tma_bf16, attn_bwd_hd192_m64n64_wgmma_tma_f16,
            attn_bwd_softcap_hd192_m64n64_wgmma_tma_bf16, attn_bwd_softcap_hd192_m64n64_wgmma_tma_f16,
            attn_bwd_varlen_hd192_m64n64_wgmma_tma_bf16, attn_bwd_varlen_hd192_m64n64_wgmma_tma_f16,
            attn_bwd_varlen_softcap_hd192_m64n64_wgmma_tma_bf16, attn_bwd_varlen_softcap_hd192_m64n64_wgmma_tma_f16];
        tiles_bwd::BWD_HD256_WGMMA_TMA => [attn_bwd_hd256_m64n64_wgmma_tma_bf16, attn_bwd_hd256_m64n64_wgmma_tma_f16,
            attn_bwd_softcap_hd256_m64n64_wgmma_tma_bf16, attn_bwd_softcap_hd256_m64n64_wgmma_tma_f16,
            attn_bwd_varlen_hd256_m64n64_wgmma_tma_bf16, attn_bwd_varlen_hd256_m64n64_wgmma_tma_f16,
            attn_bwd_varlen_softcap_hd256_m64n64_wgmma_tma_bf16, attn_bwd_varlen_softcap_hd256_m64n64_wgmma_tma_f16];
        tiles_bwd::BWD_HD192_V128_WGMMA_TMA => [attn_bwd_hd192v128_m64n64_wgmma_tma_bf16, attn_bwd_hd192v128_m64n64_wgmma_tma_f16,
            attn_bwd_softcap_hd192v128_m64n64_wgmma_tma_bf16, attn_bwd_softcap_hd192v128_m64n64_wgmma_tma_f16,
            attn_bwd_varlen_hd192v128_m64n64_wgmma_tma_bf16, attn_bwd_varlen_hd192v128_m64n64_wgmma_tma_f16,
            attn_bwd_varlen_softcap_hd192v128_m64n64_wgmma_tma_bf16, attn_bwd_varlen_softcap_hd192v128_m64n64_wgmma_tma_f16];
    }
}

const _: () = assert!(
    str_eq(abi::BWD_DSINK, "attn_bwd_dsink")
        && str_eq(abi::BWD_DELTA_BF16, "attn_bwd_delta_bf16")
        && str_eq(abi::BWD_DELTA_F16, "attn_bwd_delta_f16")
        && str_eq(abi::BWD_DQ_BF16, "attn_bwd_dq_bf16")
        && str_eq(abi::BWD_DQ_F16, "attn_bwd_dq_f16")
);

/// # Safety
/// Launched as `abi::BwdParams` documents.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn attn_bwd_delta_bf16(p: BwdParams) {
    prep::delta::<Bf16>(&p)
}

/// # Safety
/// Launched as `abi::BwdParams` documents.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn attn_bwd_delta_f16(p: BwdParams) {
    prep::delta::<F16>(&p)
}

/// # Safety
/// Launched as `abi::BwdParams` documents.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn attn_bwd_dq_bf16(p: BwdParams) {
    prep::dq_convert::<Bf16>(&p)
}

/// # Safety
/// Launched as `abi::BwdParams` documents.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn attn_bwd_dq_f16(p: BwdParams) {
    prep::dq_convert::<F16>(&p)
}

/// # Safety
/// Launched as `abi::BwdParams` documents, after the delta kernel, with sinks.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn attn_bwd_dsink(p: BwdParams) {
    prep::d_sinks(&p)
}
