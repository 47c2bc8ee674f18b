//! Host-side tensors: a buffer plus a `Layout`. The CPU path computes on these and the GPU path
//! copies them to and from the device.

use crate::dtype::Element;
use crate::error::{Arg, Result};
use crate::layout::Layout;
use rand::Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor<T> {
    pub data: Vec<T>,
    pub layout: Layout,
}

impl<T: Element> HostTensor<T> {
    /// Wrap a buffer; fails if the layout reaches past it or is malformed.
    pub fn from_vec(data: Vec<T>, layout: Layout, arg: Arg) -> Result<Self> {
        layout.validate(arg, data.len())?;
        Ok(HostTensor { data, layout })
    }

    /// A contiguous tensor filled with `value`.
    pub fn filled(shape: [usize; 4], value: T) -> Self {
        let layout = Layout::contiguous(shape);
        HostTensor { data: vec![value; layout.numel()], layout }
    }

    /// A contiguous tensor of values drawn uniformly from [-amplitude, amplitude).
    pub fn random(shape: [usize; 4], amplitude: f32, rng: &mut impl Rng) -> Self {
        Self::random_with_layout(Layout::contiguous(shape), amplitude, rng)
    }

    /// As [`random`](Self::random) from a seed, with no random number generator in the caller's crate
    /// (the same seed gives the same tensor).
    pub fn random_seeded(shape: [usize; 4], amplitude: f32, seed: u64) -> Self {
        use rand::SeedableRng;
        Self::random(shape, amplitude, &mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    /// A tensor with the given (possibly padded) layout; padding holds random values too.
    pub fn random_with_layout(layout: Layout, amplitude: f32, rng: &mut impl Rng) -> Self {
        let data = (0..layout.span()).map(|_| T::from_f32(rng.random_range(-amplitude..amplitude))).collect();
        HostTensor { data, layout }
    }

    pub fn shape(&self) -> [usize; 4] {
        self.layout.shape
    }

    #[inline]
    pub fn get(&self, b: usize, s: usize, h: usize, d: usize) -> T {
        self.data[self.layout.offset(b, s, h, d)]
    }

    #[inline]
    pub fn set(&mut self, b: usize, s: usize, h: usize, d: usize, value: T) {
        let i = self.layout.offset(b, s, h, d);
        self.data[i] = value;
    }

    /// The logical elements in `[b, s, h, d]` order, as f64.
    pub fn to_f64_contiguous(&self) -> Vec<f64> {
        let [nb, ns, nh, nd] = self.layout.shape;
        let mut out = Vec::with_capacity(self.layout.numel());
        for b in 0..nb {
            for s in 0..ns {
                for h in 0..nh {
                    let base = self.layout.offset(b, s, h, 0);
                    out.extend(self.data[base..base + nd].iter().map(|x| x.to_f64()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn random_seeded_repeats_and_stays_in_range() {
        let a = HostTensor::<bf16>::random_seeded([1, 3, 2, 8], 0.5, 7);
        assert_eq!(a, HostTensor::<bf16>::random_seeded([1, 3, 2, 8], 0.5, 7));
        assert_ne!(a, HostTensor::<bf16>::random_seeded([1, 3, 2, 8], 0.5, 8));
        assert!(a.data.iter().all(|x| x.to_f32().abs() <= 0.5));
    }
}
