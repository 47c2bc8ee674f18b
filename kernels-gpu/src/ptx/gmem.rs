//! Global-memory vector store (PTX ISA §9.7.9.10 `st`, `.v4` vectors).

/// `st.global.v4.b32`: 16 bytes.
///
/// # Safety
/// `dst` is a 16-byte aligned global address of 16 writable bytes.
#[inline(always)]
pub unsafe fn store_v4(dst: *mut u16, v: [u32; 4]) {
    core::arch::asm!(
        "st.global.v4.b32 [{0}], {{{1}, {2}, {3}, {4}}};",
        in(reg64) dst, in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3],
        options(nostack)
    );
}
