//! The ring's algorithm on the CPU (`ring::cpu`, no GPU, no NCCL): every rank's steps (the step plans
//! of `ring::shard`) and the merges, gathered over the ranks, equal single-sequence attention in f64
//! (to rounding: 1e-12 relative), forward and backward, for 1-4 ranks, contiguous and zig-zag shards,
//! odd lengths, causal or not, GQA, sliding windows, softcap, ALiBi (per head and per batch entry) and
//! sinks; and bad shards and over-long positional rings are typed errors.

use half::bf16;
use ironflash::cpu::{reference_backward_given_o, reference_forward};
use ironflash::ring::cpu::{backward, forward, shard, unshard, unshard_lse};
use ironflash::ring::{ShardLayout, Sharding};
use ironflash::{AttnOptions, Error, HostTensor, Layout, PerHead};

fn refs(v: &[HostTensor<bf16>]) -> Vec<&HostTensor<bf16>> {
    v.iter().collect()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

#[test]
fn ring_on_the_cpu_is_single_sequence_attention() {
    let sinks = [0.3f32, -0.7, 1.1, 0.0];
    let slopes = [0.25f32, 0.125, 0.0625, 0.5, 0.3, 0.2, 0.1, 0.05];
    let (none, per_head, per_entry) = (0, 1, 2);
    let mut seed = 0;
    for world in 1..=4 {
        for (seqlen, layout) in [(23, ShardLayout::ZigZag), (40, ShardLayout::Contiguous), (37, ShardLayout::ZigZag)] {
            for (causal, softcap, with_sinks, (left, right), alibi) in [
                (true, None, false, (None, None), none),
                (false, Some(5.0), true, (None, None), none),
                (true, Some(3.0), true, (None, None), none),
                (true, None, false, (Some(5), None), per_head),
                (false, None, true, (Some(4), Some(6)), none),
                (false, Some(5.0), false, (None, None), per_entry),
                (true, Some(3.0), true, (Some(7), None), per_entry),
                (false, None, false, (None, Some(2)), per_head),
                (true, None, true, (None, Some(4)), none),
            ] {
                seed += 1;
                let (b, hq, hkv, d) = (2, 4, 2, 32);
                let q = HostTensor::<bf16>::random_seeded([b, seqlen, hq, d], 1.0, seed);
                let k = HostTensor::<bf16>::random_seeded([b, seqlen, hkv, d], 1.0, seed + 100);
                let v = HostTensor::<bf16>::random_seeded([b, seqlen, hkv, d], 1.0, seed + 200);
                let d_o = HostTensor::<bf16>::random_seeded([b, seqlen, hq, d], 1.0, seed + 300);
                let opts = AttnOptions {
                    causal,
                    softcap,
                    sinks: with_sinks.then_some(PerHead::Host(&sinks)),
                    alibi_slopes: [None, Some(PerHead::Host(&slopes[..hq])), Some(PerHead::Host(&slopes[..b * hq]))]
                        [alibi],
                    ..AttnOptions::default()
                }
                .with_window(left, right);
                let sh = Sharding { seqlen, world, layout };
                let shards = |t: &HostTensor<bf16>| (0..world).map(|r| shard(t, &sh, r)).collect::<Vec<_>>();
                let (qs, ks, vs, dos) = (shards(&q), shards(&k), shards(&v), shards(&d_o));
                let fwd = forward(&refs(&qs), &refs(&ks), &refs(&vs), &sh, &opts).unwrap();
                let o = unshard(&fwd.iter().map(|r| r.o.clone()).collect::<Vec<_>>(), &sh, b, hq * d);
                let lse = unshard_lse(&fwd.iter().map(|r| r.lse.clone()).collect::<Vec<_>>(), &sh, b, hq);
                let want = reference_forward(&q, &k, &v, &opts).unwrap();
                let what = format!(
                    "world {world} seqlen {seqlen} {layout:?} causal {causal} softcap {softcap:?} sinks {with_sinks} \
                     window {left:?}/{right:?} alibi {alibi}"
                );
                assert!(rel(&o, &want.o) < 1e-12, "O {what}: {}", rel(&o, &want.o));
                assert!(rel(&lse, &want.lse) < 1e-12, "LSE {what}");

                // The backward given the forward's O in bf16, as a GPU backward is handed it.
                let o_t = HostTensor::from_vec(
                    want.o.iter().map(|&x| bf16::from_f64(x)).collect(),
                    Layout::contiguous([b, seqlen, hq, d]),
                    ironflash::Arg::O,
                )
                .unwrap();
                let os = shards(&o_t);
                let lses: Vec<&[f64]> = fwd.iter().map(|r| r.lse.as_slice()).collect();
                let g =
                    backward(&refs(&qs), &refs(&ks), &refs(&vs), &refs(&os), &lses, &refs(&dos), &sh, &opts).unwrap();
                let want_g = reference_backward_given_o(&q, &k, &v, &o_t, &d_o, &opts).unwrap();
                let gather = |f: &dyn Fn(&ironflash::ring::cpu::RingBackward) -> Vec<f64>, row| {
                    unshard(&g.iter().map(f).collect::<Vec<_>>(), &sh, b, row)
                };
                assert!(rel(&gather(&|r| r.dq.clone(), hq * d), &want_g.dq) < 1e-12, "dQ {what}");
                assert!(rel(&gather(&|r| r.dk.clone(), hkv * d), &want_g.dk) < 1e-12, "dK {what}");
                assert!(rel(&gather(&|r| r.dv.clone(), hkv * d), &want_g.dv) < 1e-12, "dV {what}");
                if let Some(want_ds) = &want_g.d_sinks {
                    for r in &g {
                        assert!(rel(r.d_sinks.as_ref().unwrap(), want_ds) < 1e-12, "d_sinks {what}");
                    }
                }
            }
        }
    }
}

#[test]
fn long_positional_rings_and_wrong_shards_are_typed_errors() {
    let sh = Sharding { seqlen: 10, world: 2, layout: ShardLayout::ZigZag };
    let t = HostTensor::<bf16>::random_seeded([1, 5, 1, 32], 1.0, 1);
    let ts = [&t, &t];
    // Windows and ALiBi shift the step calls' diagonals, which bounds the sequence.
    let huge = Sharding { seqlen: (1 << 28) + 2, ..sh };
    let window = AttnOptions::default().with_window(Some(3), None);
    assert!(matches!(forward(&ts, &ts, &ts, &huge, &window), Err(Error::TooLarge { .. })));
    let slopes = [0.5f32];
    let alibi = AttnOptions::default().with_alibi(PerHead::Host(&slopes));
    assert!(matches!(forward(&ts, &ts, &ts, &huge, &alibi), Err(Error::TooLarge { .. })));
    let long = HostTensor::<bf16>::random_seeded([1, 6, 1, 32], 1.0, 1);
    assert!(matches!(
        forward(&[&t, &long], &ts, &ts, &sh, &AttnOptions::default()),
        Err(Error::ShapeMismatch { what: "seqlen", .. })
    ));
}
