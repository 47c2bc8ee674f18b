//! Shapes and strides of attention tensors, in FlashAttention's layout `[batch, seqlen, heads, head_dim]`.
//! Strides are in elements; batch, sequence and head strides are free, the last dimension must be
//! contiguous so that the kernels can load 16-byte vectors along head_dim.

use crate::error::{Arg, Error, Result};

/// Shape and strides of one `[batch, seqlen, heads, head_dim]` tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// `[batch, seqlen, heads, head_dim]`
    pub shape: [usize; 4],
    /// Element strides for the same four dimensions; `strides[3]` must be 1.
    pub strides: [usize; 4],
}

pub const DIM_NAMES: [&str; 4] = ["batch", "seqlen", "heads", "head_dim"];

impl Layout {
    /// A densely packed (row-major) layout.
    pub fn contiguous(shape: [usize; 4]) -> Self {
        let [_, s, h, d] = shape;
        Layout { shape, strides: [s * h * d, h * d, d, 1] }
    }

    /// Build from a dynamic shape, checking the rank.
    pub fn from_dims(arg: Arg, dims: &[usize]) -> Result<Self> {
        let shape: [usize; 4] = dims.try_into().map_err(|_| Error::BadRank { arg, rank: dims.len() })?;
        Ok(Layout::contiguous(shape))
    }

    pub fn batch(&self) -> usize {
        self.shape[0]
    }
    pub fn seqlen(&self) -> usize {
        self.shape[1]
    }
    pub fn heads(&self) -> usize {
        self.shape[2]
    }
    pub fn head_dim(&self) -> usize {
        self.shape[3]
    }

    /// Number of logical elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// One past the largest element offset the layout can reach (0 for an empty tensor), saturating
    /// at `usize::MAX` when the strides reach past the address space.
    pub fn span(&self) -> usize {
        self.checked_span().unwrap_or(usize::MAX)
    }

    /// [`span`](Self::span), or `None` when it does not fit in `usize`: caller-chosen strides can
    /// be arbitrarily large, and a wrapped span would let a too-small buffer pass validation.
    pub fn checked_span(&self) -> Option<usize> {
        if self.shape.contains(&0) {
            return Some(0);
        }
        self.shape.iter().zip(&self.strides).try_fold(1usize, |acc, (&n, &s)| acc.checked_add((n - 1).checked_mul(s)?))
    }

    /// Element offset of `[b, s, h, d]`.
    #[inline]
    pub fn offset(&self, b: usize, s: usize, h: usize, d: usize) -> usize {
        b * self.strides[0] + s * self.strides[1] + h * self.strides[2] + d * self.strides[3]
    }

    /// Checks every property a kernel relies on: no zero dims, contiguous last dim, the buffer
    /// large enough for every reachable element, offsets within 32-bit row indices.
    pub fn validate(&self, arg: Arg, buffer_len: usize) -> Result<()> {
        for (dim, &n) in self.shape.iter().enumerate() {
            if n == 0 {
                return Err(Error::ZeroDim { arg, dim, name: DIM_NAMES[dim] });
            }
        }
        if self.strides[3] != 1 {
            return Err(Error::NonContiguousLastDim { arg, stride: self.strides[3] });
        }
        match self.checked_span() {
            Some(needed) if needed <= buffer_len => {}
            // A span past usize::MAX is reported as needing usize::MAX: no buffer holds that.
            needed => {
                return Err(Error::BufferTooSmall {
                    arg,
                    shape: self.shape,
                    strides: self.strides,
                    needed: needed.unwrap_or(usize::MAX),
                    len: buffer_len,
                })
            }
        }
        // Zero strides can make a huge logical tensor fit a small buffer; its element count must
        // still be countable, since outputs and loops are sized by it.
        if self.shape.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n)).is_none() {
            return Err(Error::TooLarge { arg, what: "element count", value: usize::MAX });
        }
        if self.seqlen() > i32::MAX as usize {
            return Err(Error::TooLarge { arg, what: "seqlen", value: self.seqlen() });
        }
        Ok(())
    }

    /// Outputs must not alias themselves: two different logical elements may never share an offset.
    /// Sufficient check: sorted by stride, each stride covers the extent of the smaller dims.
    pub fn validate_output(&self, arg: Arg, buffer_len: usize) -> Result<()> {
        self.validate(arg, buffer_len)?;
        let mut dims: Vec<(usize, usize)> =
            self.shape.iter().copied().zip(self.strides.iter().copied()).filter(|&(n, _)| n > 1).collect();
        dims.sort_by_key(|&(_, s)| s);
        let mut extent = 1usize;
        for (n, s) in dims {
            if s < extent {
                return Err(Error::OverlappingOutput { arg, shape: self.shape, strides: self.strides });
            }
            extent = s.saturating_mul(n);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_span_is_the_element_count() {
        let l = Layout::contiguous([2, 3, 4, 32]);
        assert_eq!(l.strides, [3 * 4 * 32, 4 * 32, 32, 1]);
        assert_eq!(l.span(), l.numel());
        assert_eq!(l.offset(1, 2, 3, 31), l.numel() - 1);
        l.validate_output(Arg::O, l.numel()).unwrap();
    }

    #[test]
    fn padded_and_head_major_spans() {
        let padded = Layout { shape: [2, 3, 4, 32], strides: [600, 170, 40, 1] };
        assert_eq!(padded.span(), 600 + 2 * 170 + 3 * 40 + 31 + 1);
        padded.validate_output(Arg::O, padded.span()).unwrap();
        let head_major = Layout { shape: [2, 3, 4, 32], strides: [4 * 3 * 32, 32, 3 * 32, 1] };
        assert_eq!(head_major.span(), head_major.numel());
        assert_eq!(head_major.offset(0, 1, 2, 0), 32 + 2 * 96);
        head_major.validate_output(Arg::O, head_major.span()).unwrap();
        assert_eq!(Layout { shape: [0, 3, 4, 32], strides: [9, 9, 9, 1] }.span(), 0);
    }

    #[test]
    fn overflowing_strides_never_fit_a_buffer() {
        let l = Layout { shape: [3, 2, 1, 32], strides: [usize::MAX / 2, 32, 32, 1] };
        assert_eq!(l.checked_span(), None);
        assert_eq!(l.span(), usize::MAX);
        let e = l.validate(Arg::K, usize::MAX).unwrap_err();
        assert!(matches!(e, Error::BufferTooSmall { arg: Arg::K, needed: usize::MAX, .. }), "{e:?}");
    }

    #[test]
    fn uncountable_broadcast_tensors_are_refused() {
        let l = Layout { shape: [1 << 40, 1 << 20, 1 << 10, 32], strides: [0, 0, 0, 1] };
        let e = l.validate(Arg::Q, 32).unwrap_err();
        assert!(matches!(e, Error::TooLarge { arg: Arg::Q, .. }), "{e:?}");
    }

    #[test]
    fn broadcast_inputs_are_valid_but_not_as_outputs() {
        let l = Layout { shape: [4, 3, 2, 32], strides: [0, 64, 32, 1] };
        l.validate(Arg::K, l.span()).unwrap();
        let e = l.validate_output(Arg::O, l.span()).unwrap_err();
        assert!(matches!(e, Error::OverlappingOutput { arg: Arg::O, .. }), "{e:?}");
    }
}
