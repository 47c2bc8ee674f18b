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

    /// One past the largest element offset the layout can reach (0 for an empty tensor).
    pub fn span(&self) -> usize {
        if self.shape.contains(&0) {
            return 0;
        }
        1 + self.shape.iter().zip(&self.strides).map(|(n, s)| (n - 1) * s).sum::<usize>()
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
        let needed = self.span();
        if needed > buffer_len {
            return Err(Error::BufferTooSmall {
                arg,
                shape: self.shape,
                strides: self.strides,
                needed,
                len: buffer_len,
            });
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
            extent = s * n;
        }
        Ok(())
    }
}
