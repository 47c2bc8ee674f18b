//! One PTX module per kernel: where each kernel entry sits in the PTX that LLVM emits for the whole
//! crate, so that the build can lay the text out as a common part (header, shared-memory declaration,
//! global constants, device functions) followed by the entries, and the host can hand the driver the
//! common part plus the one entry a call needs. The driver JIT-compiles a module as a whole: one module
//! for every kernel made the first call of a process compile all of them (some 20 s on an H100).
//!
//! Target-independent (host-side) code, used by the root build script and unit-tested here.

use core::ops::Range;

/// The kernel entries of `ptx` in order: each entry's name and the byte range of its definition, from
/// its `.visible .entry` line (LLVM starts top-level items in column 0) through its body's closing
/// brace and newline. The body is matched by counting braces outside `//` comments, which inline
/// assembly, call sequences and vector operands all keep balanced (a `}` in column 0 may close an
/// inline-assembly block). An entry
/// whose body never closes ends the iteration (the caller then finds fewer entries than it expects).
pub fn entries(ptx: &str) -> impl Iterator<Item = (&str, Range<usize>)> + '_ {
    let mut at = 0;
    core::iter::from_fn(move || {
        let start = at + find_line_starting(&ptx[at..], ".visible .entry ")?;
        let name_start = start + ".visible .entry ".len();
        let name_end = name_start + ptx[name_start..].find('(')?;
        let open = name_end + find_line_starting(&ptx[name_end..], "{")?;
        let close = open + matching_brace(&ptx[open..])?;
        let end = if ptx[close + 1..].starts_with('\n') { close + 2 } else { close + 1 };
        at = end;
        Some((&ptx[name_start..name_end], start..end))
    })
}

/// The offset of the `}` that closes the `{` at the start of `text`, braces in `//` comments aside.
fn matching_brace(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i += text[i..].find('\n')?;
                continue;
            }
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The offset of the first line of `text` that starts with `prefix`.
fn find_line_starting(text: &str, prefix: &str) -> Option<usize> {
    if text.starts_with(prefix) {
        return Some(0);
    }
    text.match_indices(prefix).map(|(i, _)| i).find(|&i| text.as_bytes()[i - 1] == b'\n')
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    const PTX: &str = "//\n.version 8.0\n.target sm_90a\n.address_size 64\n\n\
        .extern .shared .align 128 .b8 SMEM[];\n.func helper\n(\n)\n;\n\
        .global .align 1 .b8 msg[2] = {104, 105};\n\n\
        \t// .globl\tfirst\n.visible .entry first(\n\t.param .u64 first_param_0\n)\n.maxntid 128, 1, 1\n{\n\
        \t{ // callseq 0, 0\n\tcall helper, ();\n\t}\n\t// begin inline asm\n{\n.reg .pred p;\n}\n\t// end inline asm }\n\
        \tmov.b32 {%r1, %r2}, %rd1;\n\tret;\n\n}\n\
        \t// .globl\tsecond\n.visible .entry second(\n)\n{\n\tret;\n}\n\
        .func helper\n(\n)\n{\n\ttrap;\n}\n";

    #[test]
    fn finds_each_entry_whole() {
        let found: Vec<(&str, &str)> = entries(PTX).map(|(name, r)| (name, &PTX[r])).collect();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, "first");
        assert!(found[0].1.starts_with(".visible .entry first(") && found[0].1.ends_with("\tret;\n\n}\n"));
        assert!(found[0].1.contains("callseq") && found[0].1.contains("end inline asm"), "inner braces do not end it");
        assert_eq!(found[1], ("second", ".visible .entry second(\n)\n{\n\tret;\n}\n"));
    }

    #[test]
    fn the_rest_is_the_common_part() {
        let mut common = String::new();
        let mut last = 0;
        for (_, r) in entries(PTX) {
            common.push_str(&PTX[last..r.start]);
            last = r.end;
        }
        common.push_str(&PTX[last..]);
        assert!(!common.contains(".entry"));
        for part in [".version 8.0", ".extern .shared", ".global .align 1 .b8 msg", "{\n\ttrap;\n}"] {
            assert!(common.contains(part), "{part}");
        }
        // Common part and entries together hold every byte once.
        let entry_bytes: usize = entries(PTX).map(|(_, r)| r.len()).sum();
        assert_eq!(common.len() + entry_bytes, PTX.len());
    }

    #[test]
    fn no_final_newline_and_no_entries() {
        let text = ".visible .entry k(\n)\n{\n\tret;\n}";
        assert_eq!(entries(text).collect::<Vec<_>>(), [("k", 0..text.len())]);
        assert_eq!(entries(".version 8.0\n").count(), 0);
        assert_eq!(entries("").count(), 0);
    }
}
