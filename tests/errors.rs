//! Every invalid input gets its typed error naming the argument, never a panic: through
//! `cpu::forward`, `cpu::forward_into`, the reference, `AttnProblem::new` and the layout checks.

use ironflash::cpu::{forward, forward_into, reference_backward, reference_backward_given_o, reference_forward};
use ironflash::problem::{supported_head_dims_v, SUPPORTED_HEAD_DIMS};
use ironflash::{Arg, AttnOptions, AttnProblem, Error, HostTensor, Layout, Result};

fn tensor(shape: [usize; 4]) -> HostTensor<f32> {
    HostTensor::filled(shape, 0.5)
}

fn with_layout(layout: Layout, len: usize) -> HostTensor<f32> {
    HostTensor { data: vec![0.5; len], layout }
}

/// The same (invalid) call through every entry point that validates q, k and v; all must agree.
fn all_paths(q: &HostTensor<f32>, k: &HostTensor<f32>, v: &HostTensor<f32>, opts: &AttnOptions) -> Vec<Error> {
    let mut errors = Vec::new();
    let problem =
        AttnProblem::new((&q.layout, q.data.len()), (&k.layout, k.data.len()), (&v.layout, v.data.len()), opts);
    errors.push(problem.expect_err("AttnProblem::new accepted it"));
    errors.push(forward(q, k, v, opts).expect_err("cpu::forward accepted it"));
    errors.push(reference_forward(q, k, v, opts).expect_err("reference_forward accepted it"));
    let d_o = tensor([1, 1, 1, 32]);
    errors.push(reference_backward(q, k, v, &d_o, opts).expect_err("reference_backward accepted it"));
    if q.layout.shape.iter().product::<usize>() < 1 << 20 {
        let mut o = tensor(q.layout.shape);
        let mut lse = vec![0.0; 1 << 10];
        errors.push(forward_into(q, k, v, opts, &mut o, &mut lse).expect_err("forward_into accepted it"));
    }
    errors
}

/// Asserts every path's error matches `pattern`.
macro_rules! assert_all {
    ($errors:expr, $pattern:pat $(if $guard:expr)?) => {
        for e in $errors {
            assert!(matches!(e, $pattern $(if $guard)?), "got {e:?}, want {}", stringify!($pattern $(if $guard)?));
        }
    };
}

const Q: [usize; 4] = [2, 5, 4, 64];
const KV: [usize; 4] = [2, 7, 2, 64];

#[test]
fn bad_rank() {
    for dims in [&[][..], &[64][..], &[2, 5, 64][..], &[1, 2, 5, 4, 64][..]] {
        let e = Layout::from_dims(Arg::K, dims).unwrap_err();
        assert!(matches!(e, Error::BadRank { arg: Arg::K, rank } if rank == dims.len()), "{e:?}");
    }
    assert_eq!(Layout::from_dims(Arg::Q, &Q).unwrap(), Layout::contiguous(Q));
}

#[test]
fn zero_sized_dims() {
    for dim in 0..4 {
        let mut shape = Q;
        shape[dim] = 0;
        let (q, k, v) = (tensor(shape), tensor(KV), tensor(KV));
        assert_all!(all_paths(&q, &k, &v, &AttnOptions::default()), Error::ZeroDim { arg: Arg::Q, dim: d, .. } if d == dim);
        let mut shape = KV;
        shape[dim] = 0;
        let (q, k, v) = (tensor(Q), tensor(KV), tensor(shape));
        assert_all!(all_paths(&q, &k, &v, &AttnOptions::default()), Error::ZeroDim { arg: Arg::V, dim: d, .. } if d == dim);
    }
}

#[test]
fn k_or_v_not_matching_q() {
    let opts = AttnOptions::default();
    let q = tensor(Q);
    // batch of k, batch of v, head_dim of k, seqlen and heads of v (v's head_dim: `v_head_dim_unsupported`)
    let cases: [(Arg, [usize; 4], [usize; 4], &str); 5] = [
        (Arg::K, [1, 7, 2, 64], KV, "batch"),
        (Arg::V, KV, [3, 7, 2, 64], "batch"),
        (Arg::K, [2, 7, 2, 128], KV, "head_dim"),
        (Arg::V, KV, [2, 8, 2, 64], "seqlen"),
        (Arg::V, KV, [2, 7, 1, 64], "heads"),
    ];
    for (arg, k_shape, v_shape, what) in cases {
        let (k, v) = (tensor(k_shape), tensor(v_shape));
        assert_all!(all_paths(&q, &k, &v, &opts), Error::ShapeMismatch { arg: a, what: w, .. } if a == arg && w == what);
    }
}

#[test]
fn v_head_dim_unsupported() {
    // V may have a head dim of its own only where one is supported (192 with 128); elsewhere it is q's.
    let q = tensor([1, 5, 2, 128]);
    let k = tensor([1, 7, 1, 128]);
    let v = tensor([1, 7, 1, 64]);
    assert_all!(
        all_paths(&q, &k, &v, &AttnOptions::default()),
        Error::UnsupportedHeadDimV { head_dim: 128, head_dim_v: 64, supported } if supported == supported_head_dims_v(128)
    );
    let q = tensor([1, 5, 2, 192]);
    let k = tensor([1, 7, 1, 192]);
    for d_v in [64, 256] {
        assert_all!(
            all_paths(&q, &k, &tensor([1, 7, 1, d_v]), &AttnOptions::default()),
            Error::UnsupportedHeadDimV { head_dim: 192, head_dim_v, supported } if head_dim_v == d_v && supported == supported_head_dims_v(192)
        );
    }
}

#[test]
fn k_head_dim_follows_q_where_v_has_its_own() {
    // V's head dim of its own does not free K's: q and k share one.
    let (q, k, v) = (tensor([1, 5, 2, 192]), tensor([1, 7, 1, 128]), tensor([1, 7, 1, 128]));
    assert_all!(
        all_paths(&q, &k, &v, &AttnOptions::default()),
        Error::ShapeMismatch { arg: Arg::K, what: "head_dim", got: 128, expected: 192, .. }
    );
}

#[test]
fn outputs_shaped_with_q_head_dim_where_v_has_its_own() {
    // Q and K 192, V 128: O and dO are [.., 128], so the q-shaped ones are refused, naming the head dim.
    let (q, k, v) = (tensor([1, 5, 2, 192]), tensor([1, 7, 1, 192]), tensor([1, 7, 1, 128]));
    let opts = AttnOptions::causal();
    let mut lse = vec![0.0; 2 * 5];
    let mut o = tensor([1, 5, 2, 192]);
    let e = forward_into(&q, &k, &v, &opts, &mut o, &mut lse).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::O, what: "head_dim", got: 192, expected: 128, .. }), "{e:?}");
    let e = reference_backward(&q, &k, &v, &tensor([1, 5, 2, 192]), &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::DO, what: "head_dim", got: 192, expected: 128, .. }), "{e:?}");
    let e =
        reference_backward_given_o(&q, &k, &v, &tensor([1, 5, 2, 192]), &tensor([1, 5, 2, 128]), &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::O, what: "head_dim", got: 192, expected: 128, .. }), "{e:?}");

    // Shaped like O, the same calls succeed; O and the gradients come back in their own shapes.
    let mut o = tensor([1, 5, 2, 128]);
    forward_into(&q, &k, &v, &opts, &mut o, &mut lse).unwrap();
    assert_eq!(forward(&q, &k, &v, &opts).unwrap().o.shape(), [1, 5, 2, 128]);
    let grads = reference_backward(&q, &k, &v, &tensor([1, 5, 2, 128]), &opts).unwrap();
    assert_eq!((grads.dq.len(), grads.dk.len(), grads.dv.len()), (5 * 2 * 192, 7 * 192, 7 * 128));
}

#[test]
fn heads_q_not_a_multiple_of_heads_kv() {
    for (hq, hkv) in [(3, 2), (4, 3), (1, 2), (6, 4)] {
        let (q, k, v) = (tensor([1, 5, hq, 64]), tensor([1, 7, hkv, 64]), tensor([1, 7, hkv, 64]));
        assert_all!(
            all_paths(&q, &k, &v, &AttnOptions::default()),
            Error::HeadsNotMultiple { heads_q, heads_kv } if heads_q == hq && heads_kv == hkv
        );
    }
}

#[test]
fn unsupported_head_dims() {
    for d in [1, 16, 80, 100, 160, 512] {
        let (q, k, v) = (tensor([1, 3, 1, d]), tensor([1, 3, 1, d]), tensor([1, 3, 1, d]));
        assert_all!(
            all_paths(&q, &k, &v, &AttnOptions::default()),
            Error::UnsupportedHeadDim { arg: Arg::Q, head_dim, supported } if head_dim == d && supported == SUPPORTED_HEAD_DIMS
        );
    }
}

#[test]
fn non_contiguous_last_dim() {
    let strided = Layout { shape: KV, strides: [7 * 2 * 128, 2 * 128, 128, 2] };
    let k = with_layout(strided, strided.span());
    assert_all!(
        all_paths(&tensor(Q), &k, &tensor(KV), &AttnOptions::default()),
        Error::NonContiguousLastDim { arg: Arg::K, stride: 2 }
    );
}

#[test]
fn buffer_too_small_for_the_strides() {
    let padded = Layout { shape: KV, strides: [7 * 2 * 80, 2 * 80, 80, 1] };
    let needed = padded.span();
    for len in [0, 1, needed - 1] {
        let v = with_layout(padded, len);
        assert_all!(
            all_paths(&tensor(Q), &tensor(KV), &v, &AttnOptions::default()),
            Error::BufferTooSmall { arg: Arg::V, needed: n, len: l, .. } if n == needed && l == len
        );
    }
    let e = HostTensor::<f32>::from_vec(vec![0.0; needed - 1], padded, Arg::V).unwrap_err();
    assert!(matches!(e, Error::BufferTooSmall { arg: Arg::V, .. }), "{e:?}");
}

#[test]
fn strides_too_large_for_the_address_space() {
    // The span of these strides does not fit in usize; it must be reported, not overflow.
    let huge = Layout { shape: [3, 5, 1, 64], strides: [usize::MAX / 2, 64, 64, 1] };
    let e = huge.validate(Arg::Q, usize::MAX).unwrap_err();
    assert!(matches!(e, Error::BufferTooSmall { arg: Arg::Q, .. } | Error::TooLarge { arg: Arg::Q, .. }), "{e:?}");
    let q = with_layout(huge, 1024);
    assert_all!(
        all_paths(&q, &tensor(KV), &tensor(KV), &AttnOptions::default()),
        Error::BufferTooSmall { arg: Arg::Q, .. } | Error::TooLarge { arg: Arg::Q, .. }
    );
}

#[test]
fn seqlen_beyond_32_bit_indices() {
    // Zero strides make the buffer tiny; the length alone must be refused.
    let long = Layout { shape: [1, 1 << 31, 1, 64], strides: [0, 0, 0, 1] };
    let q = with_layout(long, 64);
    let (k, v) = (tensor([1, 3, 1, 64]), tensor([1, 3, 1, 64]));
    let e = AttnProblem::new(
        (&q.layout, 64),
        (&k.layout, k.data.len()),
        (&v.layout, v.data.len()),
        &AttnOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::TooLarge { arg: Arg::Q, what: "seqlen", .. }), "{e:?}");
    let e = forward(&q, &k, &v, &AttnOptions::default()).unwrap_err();
    assert!(matches!(e, Error::TooLarge { arg: Arg::Q, .. }), "{e:?}");
}

#[test]
fn overlapping_output_strides() {
    let shape = [2, 5, 4, 64];
    let overlapping = [
        // heads share a row
        [5 * 64, 64, 0, 1],
        // sequence rows overlap the head rows
        [5 * 4 * 64, 64, 64, 1],
        // head rows shorter than head_dim
        [5 * 4 * 32, 4 * 32, 32, 1],
        // batches share storage
        [0, 4 * 64, 64, 1],
    ];
    for strides in overlapping {
        let layout = Layout { shape, strides };
        let len = layout.span();
        let e = layout.validate_output(Arg::O, len).unwrap_err();
        assert!(matches!(e, Error::OverlappingOutput { arg: Arg::O, .. }), "{strides:?}: {e:?}");

        let (q, k, v) = (tensor(shape), tensor([2, 7, 2, 64]), tensor([2, 7, 2, 64]));
        let p = AttnProblem::new(
            (&q.layout, q.data.len()),
            (&k.layout, k.data.len()),
            (&v.layout, v.data.len()),
            &AttnOptions::default(),
        )
        .unwrap();
        let e = p.check_like_o(Arg::O, &layout, len).unwrap_err();
        assert!(matches!(e, Error::OverlappingOutput { arg: Arg::O, .. }), "{strides:?}: {e:?}");
        let mut o = with_layout(layout, len);
        let mut lse = vec![0.0; p.lse_len()];
        let e = forward_into(&q, &k, &v, &AttnOptions::default(), &mut o, &mut lse).unwrap_err();
        assert!(matches!(e, Error::OverlappingOutput { arg: Arg::O, .. }), "{strides:?}: {e:?}");
    }
    // The same strides are fine for inputs: a zero batch stride broadcasts k and v over the batch.
    let broadcast = Layout { shape: [2, 7, 2, 64], strides: [0, 2 * 64, 64, 1] };
    let k = with_layout(broadcast, broadcast.span());
    forward(&tensor(shape), &k, &k, &AttnOptions::default()).unwrap();
}

#[test]
fn output_shaped_unlike_o() {
    let (q, k, v) = (tensor(Q), tensor(KV), tensor(KV));
    let mut o = tensor([2, 5, 2, 64]);
    let mut lse = vec![0.0; 2 * 5 * 4];
    let e = forward_into(&q, &k, &v, &AttnOptions::default(), &mut o, &mut lse).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::O, what: "heads", .. }), "{e:?}");
}

#[test]
fn d_o_shaped_unlike_o() {
    let (q, k, v) = (tensor(Q), tensor(KV), tensor(KV));
    let d_o = tensor([2, 6, 4, 64]);
    let e = reference_backward(&q, &k, &v, &d_o, &AttnOptions::default()).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::DO, what: "seqlen", .. }), "{e:?}");
}

#[test]
fn non_finite_or_zero_softmax_scale() {
    let (q, k, v) = (tensor(Q), tensor(KV), tensor(KV));
    for scale in [0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let opts = AttnOptions::default().with_scale(scale);
        for e in all_paths(&q, &k, &v, &opts) {
            assert!(matches!(e, Error::BadScale(s) if s.to_bits() == scale.to_bits()), "scale {scale}: {e:?}");
        }
    }
    // A negative scale is unusual but well defined.
    forward(&q, &k, &v, &AttnOptions::default().with_scale(-0.5)).unwrap();
}

#[test]
fn valid_calls_still_succeed() -> Result<()> {
    // Guards the helpers above: the base shapes are valid, so every error comes from the one change.
    let (q, k, v) = (tensor(Q), tensor(KV), tensor(KV));
    let opts = AttnOptions::causal();
    AttnProblem::new((&q.layout, q.data.len()), (&k.layout, k.data.len()), (&v.layout, v.data.len()), &opts)?;
    forward(&q, &k, &v, &opts)?;
    reference_backward(&q, &k, &v, &tensor(Q), &opts)?;
    Ok(())
}
