//! The f64 reference of packed variable-length batches (`cpu::varlen`): with equal lengths it is the
//! dense batched reference; mixed lengths (empty sequences, sequences without keys) land in the right
//! rows; the backward matches the dense one; bad offsets are typed errors. The CPU's tiled varlen
//! forward (`cpu::varlen::forward_varlen`) matches the reference.

use half::{bf16, f16};
use ironflash::cpu::varlen::{forward_varlen, reference_backward_varlen, reference_forward_varlen, Varlen};
use ironflash::cpu::{reference_backward_given_o, reference_forward};
use ironflash::{Arg, AttnOptions, Element, Error, HostTensor, PerHead, Window};

/// `[b, s, h, d]` as the packed `[1, b·s, h, d]` (the same contiguous memory).
fn packed(t: &HostTensor<bf16>) -> HostTensor<bf16> {
    let [b, s, h, d] = t.shape();
    HostTensor { data: t.data.clone(), layout: ironflash::Layout::contiguous([1, b * s, h, d]) }
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y || (x - y).abs() <= 1e-12 * (1.0 + y.abs()))
}

#[test]
fn equal_lengths_are_the_dense_batch() {
    let (b, sq, sk, hq, hkv, d) = (3, 37, 53, 4, 2, 64);
    let q = HostTensor::<bf16>::random_seeded([b, sq, hq, d], 1.0, 1);
    let k = HostTensor::<bf16>::random_seeded([b, sk, hkv, d], 1.0, 2);
    let v = HostTensor::<bf16>::random_seeded([b, sk, hkv, d], 1.0, 3);
    let d_o = HostTensor::<bf16>::random_seeded([b, sq, hq, d], 1.0, 4);
    let slopes: Vec<f32> = (0..b * hq).map(|i| 0.05 * (i + 1) as f32).collect();
    let sinks = [0.3f32, -1.0, 2.0, 0.0];
    let cu_q: Vec<i32> = (0..=b as i32).map(|i| i * sq as i32).collect();
    let cu_k: Vec<i32> = (0..=b as i32).map(|i| i * sk as i32).collect();
    let seqs = Varlen { cu_seqlens_q: &cu_q, cu_seqlens_k: &cu_k };
    let options = [
        AttnOptions::causal(),
        AttnOptions { window: Window { left: Some(9), right: Some(4) }, ..AttnOptions::default() },
        AttnOptions::causal().with_softcap(5.0).with_alibi(PerHead::Host(&slopes)).with_sinks(PerHead::Host(&sinks)),
    ];
    for opts in options {
        let dense = reference_forward(&q, &k, &v, &opts).unwrap();
        let var = reference_forward_varlen(&packed(&q), &packed(&k), &packed(&v), &seqs, &opts).unwrap();
        assert!(close(&var.o, &dense.o), "{opts:?}: O");
        // LSE: dense [b, hq, sq], varlen [hq, b·sq].
        for bi in 0..b {
            for h in 0..hq {
                for i in 0..sq {
                    let (x, y) = (var.lse[h * b * sq + bi * sq + i], dense.lse[(bi * hq + h) * sq + i]);
                    assert!(x == y || (x - y).abs() < 1e-12, "{opts:?}: lse");
                }
            }
        }
        let o = HostTensor::<bf16> {
            data: dense.o.iter().map(|&x| bf16::from_f64(x)).collect(),
            layout: ironflash::Layout::contiguous([b, sq, hq, d]),
        };
        let dense_bwd = reference_backward_given_o(&q, &k, &v, &o, &d_o, &opts).unwrap();
        let var_bwd =
            reference_backward_varlen(&packed(&q), &packed(&k), &packed(&v), &packed(&o), &packed(&d_o), &seqs, &opts)
                .unwrap();
        assert!(close(&var_bwd.dq, &dense_bwd.dq) && close(&var_bwd.dk, &dense_bwd.dk), "{opts:?}: dQ, dK");
        assert!(close(&var_bwd.dv, &dense_bwd.dv), "{opts:?}: dV");
        match (var_bwd.d_sinks, dense_bwd.d_sinks) {
            (Some(a), Some(b)) => assert!(close(&a, &b), "{opts:?}: d_sinks"),
            (None, None) => {}
            _ => panic!("{opts:?}: d_sinks present on one side only"),
        }
    }
}

#[test]
fn mixed_lengths_land_in_their_rows() {
    // (queries, keys) per sequence: empty, keyless, single token, causal with more queries than keys.
    let lengths = [(3usize, 5usize), (0, 4), (2, 0), (1, 1), (6, 4)];
    let (hq, hkv, d) = (2, 1, 32);
    let offsets = |len: fn(&(usize, usize)) -> usize| {
        let mut cu = vec![0i32];
        for l in &lengths {
            cu.push(cu[cu.len() - 1] + len(l) as i32);
        }
        cu
    };
    let (cu_q, cu_k) = (offsets(|l| l.0), offsets(|l| l.1));
    let (tq, tk) = (cu_q[lengths.len()] as usize, cu_k[lengths.len()] as usize);
    let q = HostTensor::<bf16>::random_seeded([1, tq, hq, d], 1.0, 5);
    let k = HostTensor::<bf16>::random_seeded([1, tk, hkv, d], 1.0, 6);
    let v = HostTensor::<bf16>::random_seeded([1, tk, hkv, d], 1.0, 7);
    let sinks = [0.5f32, -0.5];
    let seqs = Varlen { cu_seqlens_q: &cu_q, cu_seqlens_k: &cu_k };
    for opts in [AttnOptions::causal(), AttnOptions::causal().with_sinks(PerHead::Host(&sinks))] {
        let var = reference_forward_varlen(&q, &k, &v, &seqs, &opts).unwrap();
        for (b, &(sq, sk)) in lengths.iter().enumerate() {
            let (q0, k0) = (cu_q[b] as usize, cu_k[b] as usize);
            let lse_of = |h: usize, i: usize| var.lse[h * tq + q0 + i];
            let o_row = |i: usize, h: usize| &var.o[((q0 + i) * hq + h) * d..][..d];
            if sq == 0 {
                continue;
            }
            if sk == 0 {
                for (h, i) in (0..hq).flat_map(|h| (0..sq).map(move |i| (h, i))) {
                    let want = opts.sinks.map_or(f64::NEG_INFINITY, |_| sinks[h] as f64);
                    assert_eq!(lse_of(h, i), want);
                    assert!(o_row(i, h).iter().all(|&x| x == 0.0));
                }
                continue;
            }
            let slice = |t: &HostTensor<bf16>, from: usize, n: usize| {
                let [_, _, h, dim] = t.shape();
                let mut out = HostTensor::<bf16>::filled([1, n, h, dim], bf16::ZERO);
                for (s, hh, dd) in (0..n).flat_map(|s| (0..h).flat_map(move |hh| (0..dim).map(move |dd| (s, hh, dd)))) {
                    out.set(0, s, hh, dd, t.get(0, from + s, hh, dd));
                }
                out
            };
            let dense = reference_forward(&slice(&q, q0, sq), &slice(&k, k0, sk), &slice(&v, k0, sk), &opts).unwrap();
            for (h, i) in (0..hq).flat_map(|h| (0..sq).map(move |i| (h, i))) {
                assert_eq!(lse_of(h, i), dense.lse[h * sq + i], "sequence {b} head {h} row {i}");
                assert_eq!(o_row(i, h), &dense.o[(i * hq + h) * d..][..d]);
            }
        }
    }
}

#[test]
fn bad_offsets_are_typed_errors() {
    let q = HostTensor::<bf16>::random_seeded([1, 10, 2, 32], 1.0, 8);
    let k = HostTensor::<bf16>::random_seeded([1, 12, 2, 32], 1.0, 9);
    let ok_k = [0, 5, 12];
    let cases: [(&[i32], &[i32], Arg); 5] = [
        (&[1, 4, 10], &ok_k, Arg::CuSeqlensQ),
        (&[0, 6, 4, 10], &[0, 5, 6, 12], Arg::CuSeqlensQ),
        (&[0, 4, 9], &ok_k, Arg::CuSeqlensQ),
        (&[0], &[0], Arg::CuSeqlensQ),
        (&[0, 4, 10], &[0, 12], Arg::CuSeqlensK),
    ];
    for (cu_q, cu_k, arg) in cases {
        let seqs = Varlen { cu_seqlens_q: cu_q, cu_seqlens_k: cu_k };
        let e = reference_forward_varlen(&q, &k, &k, &seqs, &AttnOptions::default()).unwrap_err();
        let named = match &e {
            Error::BadSeqlenOffsets { arg: a, .. } | Error::ShapeMismatch { arg: a, .. } => *a == arg,
            _ => false,
        };
        assert!(named, "{cu_q:?} {cu_k:?}: {e}");
    }
    // A batch dimension other than 1, and ALiBi slopes neither [heads_q] nor [batch, heads_q].
    let seqs = Varlen { cu_seqlens_q: &[0, 4, 10], cu_seqlens_k: &ok_k };
    let dense = HostTensor::<bf16>::random_seeded([2, 5, 2, 32], 1.0, 10);
    let e = reference_forward_varlen(&dense, &k, &k, &seqs, &AttnOptions::default()).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::Q, what: "batch", .. }), "{e}");
    let three = [0.5f32; 3];
    let opts = AttnOptions::default().with_alibi(PerHead::Host(&three));
    let e = reference_forward_varlen(&q, &k, &k, &seqs, &opts).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { arg: Arg::AlibiSlopes, .. }), "{e}");
}

/// The tiled path over mixed lengths (empty, keyless, single-token, more queries than keys) and every
/// option, per-sequence ALiBi rows included, in each element type: O within the tiled path's dense
/// bounds of the f64 reference (relative L2), the LSE within 4e-6 of its scale, keyless rows exactly O = 0
/// and the sink's logit or −inf.
#[test]
fn tiled_path_matches_the_reference() {
    fn check<T: Element>(unit_roundoff: f64) {
        let lengths = [(70usize, 90usize), (0, 4), (5, 0), (1, 1), (33, 17), (128, 300)];
        let (hq, hkv, d) = (4, 2, 64);
        let mut cu_q = vec![0i32];
        let mut cu_k = vec![0i32];
        for &(sq, sk) in &lengths {
            cu_q.push(cu_q[cu_q.len() - 1] + sq as i32);
            cu_k.push(cu_k[cu_k.len() - 1] + sk as i32);
        }
        let (tq, tk) = (cu_q[lengths.len()] as usize, cu_k[lengths.len()] as usize);
        let q = HostTensor::<T>::random_seeded([1, tq, hq, d], 1.0, 11);
        let k = HostTensor::<T>::random_seeded([1, tk, hkv, d], 1.0, 12);
        let v = HostTensor::<T>::random_seeded([1, tk, hkv, d], 1.0, 13);
        let seqs = Varlen { cu_seqlens_q: &cu_q, cu_seqlens_k: &cu_k };
        let slopes: Vec<f32> = (0..lengths.len() * hq).map(|i| 0.03 * (i + 1) as f32).collect();
        let sinks = [0.4f32, -0.7, 1.5, 0.0];
        let options = [
            AttnOptions::causal().with_sinks(PerHead::Host(&sinks)),
            AttnOptions { window: Window { left: Some(20), right: Some(3) }, ..AttnOptions::default() },
            AttnOptions::causal().with_softcap(4.0).with_alibi(PerHead::Host(&slopes)),
        ];
        for opts in options {
            let got = forward_varlen(&q, &k, &v, &seqs, &opts).unwrap();
            let want = reference_forward_varlen(&q, &k, &v, &seqs, &opts).unwrap();
            assert_eq!(got.o.layout, ironflash::Layout::contiguous([1, tq, hq, d]));
            let o = got.o.to_f64_contiguous();
            let num: f64 = o.iter().zip(&want.o).map(|(x, y)| (x - y) * (x - y)).sum();
            let den: f64 = want.o.iter().map(|y| y * y).sum();
            let err = (num / den).sqrt();
            assert!(err < 4.0 * unit_roundoff + 1e-5, "{} {opts:?}: O relative L2 {err:.3e}", T::DTYPE);
            let scale = want.lse.iter().filter(|x| x.is_finite()).fold(1.0f64, |m, x| m.max(x.abs()));
            for (i, (&g, &w)) in got.lse.iter().zip(&want.lse).enumerate() {
                if w.is_finite() {
                    assert!((g as f64 - w).abs() <= 4e-6 * scale, "{} {opts:?}: lse[{i}] {g} against {w}", T::DTYPE);
                } else {
                    assert_eq!(g as f64, w, "{} {opts:?}: lse[{i}]", T::DTYPE);
                }
            }
            // The keyless sequence (index 2): O exactly 0.
            let (q0, n) = (cu_q[2] as usize, lengths[2].0);
            assert!(o[q0 * hq * d..(q0 + n) * hq * d].iter().all(|&x| x == 0.0), "{opts:?}: keyless O");
        }
    }
    check::<bf16>(2f64.powi(-9));
    check::<f16>(2f64.powi(-12));
    check::<f32>(2f64.powi(-24));
}
