//! The f64 reference over a paged KV cache (`cpu::paged`): gathering through a shuffled block table
//! gives the dense reference on each sequence's contiguous keys, for page sizes 1, 7 and 16; appended
//! keys land in the pages (across page boundaries) and are attended to; rotary embeddings rotate the new
//! keys at their cache positions and the queries where FlashAttention places them; a bad table, bad
//! lengths or bad rotary tables are typed errors. The CPU's tiled paged forward
//! (`cpu::paged::forward_paged`) matches the reference and writes the same pages.

use half::bf16;
use ironflash::cpu::paged::{forward_paged, reference_forward_paged, KvAppend, PagedKv, Rotary};
use ironflash::cpu::reference_forward;
use ironflash::{Arg, AttnOptions, Error, HostTensor, PerHead};
use rand::seq::SliceRandom;
use rand::SeedableRng;

const HEADS_Q: usize = 4;
const HEADS_KV: usize = 2;
const D: usize = 32;

/// Sequence b's logical keys (`lens[b]` tokens) and a cache holding them in shuffled pages.
struct Fixture {
    keys: Vec<HostTensor<bf16>>,
    values: Vec<HostTensor<bf16>>,
    k_pages: HostTensor<bf16>,
    v_pages: HostTensor<bf16>,
    table: Vec<i32>,
}

fn fixture(lens: &[usize], page_size: usize, pages_per_seq: usize, seed: u64) -> Fixture {
    let batch = lens.len();
    let num_pages = batch * pages_per_seq + 3;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut pages: Vec<i32> = (0..num_pages as i32).collect();
    pages.shuffle(&mut rng);
    let table: Vec<i32> = pages[..batch * pages_per_seq].to_vec();
    let mut k_pages = HostTensor::<bf16>::random([num_pages, page_size, HEADS_KV, D], 1.0, &mut rng);
    let mut v_pages = HostTensor::<bf16>::random([num_pages, page_size, HEADS_KV, D], 1.0, &mut rng);
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for (b, &len) in lens.iter().enumerate() {
        let k = HostTensor::<bf16>::random([1, len.max(1), HEADS_KV, D], 1.0, &mut rng);
        let v = HostTensor::<bf16>::random([1, len.max(1), HEADS_KV, D], 1.0, &mut rng);
        for t in 0..len {
            let page = table[b * pages_per_seq + t / page_size] as usize;
            for h in 0..HEADS_KV {
                for d in 0..D {
                    k_pages.set(page, t % page_size, h, d, k.get(0, t, h, d));
                    v_pages.set(page, t % page_size, h, d, v.get(0, t, h, d));
                }
            }
        }
        keys.push(k);
        values.push(v);
    }
    Fixture { keys, values, k_pages, v_pages, table }
}

/// Tokens `0..n` of a `[1, tokens, heads, dim]` tensor, then the `extra` tokens of batch row `b`.
fn join(t: &HostTensor<bf16>, n: usize, extra: Option<(&HostTensor<bf16>, usize)>) -> HostTensor<bf16> {
    let [_, _, h, d] = t.shape();
    let more = extra.map_or(0, |(e, _)| e.shape()[1]);
    let mut out = HostTensor::<bf16>::filled([1, n + more, h, d], bf16::ZERO);
    for (s, hh, dd) in (0..n).flat_map(|s| (0..h).flat_map(move |hh| (0..d).map(move |dd| (s, hh, dd)))) {
        out.set(0, s, hh, dd, t.get(0, s, hh, dd));
    }
    if let Some((e, b)) = extra {
        for (s, hh, dd) in (0..more).flat_map(|s| (0..h).flat_map(move |hh| (0..d).map(move |dd| (s, hh, dd)))) {
            out.set(0, n + s, hh, dd, e.get(b, s, hh, dd));
        }
    }
    out
}

fn query_rows(q: &HostTensor<bf16>, b: usize) -> HostTensor<bf16> {
    let [_, s, h, d] = q.shape();
    let mut out = HostTensor::<bf16>::filled([1, s, h, d], bf16::ZERO);
    for (i, hh, dd) in (0..s).flat_map(|i| (0..h).flat_map(move |hh| (0..d).map(move |dd| (i, hh, dd)))) {
        out.set(0, i, hh, dd, q.get(b, i, hh, dd));
    }
    out
}

fn check_against_dense(
    got: &ironflash::cpu::paged::PagedReferenceForward,
    q: &HostTensor<bf16>,
    dense_kv: impl Fn(usize) -> (HostTensor<bf16>, HostTensor<bf16>),
    opts: &AttnOptions,
) {
    let [batch, sq, hq, _] = q.shape();
    for b in 0..batch {
        let (k, v) = dense_kv(b);
        let want = reference_forward(&query_rows(q, b), &k, &v, opts).unwrap();
        let rows = sq * hq * D;
        assert_eq!(&got.o[b * rows..(b + 1) * rows], &want.o[..], "sequence {b}: O");
        assert_eq!(&got.lse[b * hq * sq..(b + 1) * hq * sq], &want.lse[..], "sequence {b}: LSE");
    }
}

#[test]
fn gather_through_a_shuffled_table() {
    for page_size in [1usize, 7, 16] {
        let lens = [5usize, 1, 23, 16];
        let pages_per_seq = 23usize.div_ceil(page_size) + 1;
        let mut f = fixture(&lens, page_size, pages_per_seq, page_size as u64);
        let q = HostTensor::<bf16>::random_seeded([lens.len(), 3, HEADS_Q, D], 1.0, 40);
        let seqlens: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        let slopes = [0.25f32, 0.5, 0.125, 0.0625];
        for opts in [AttnOptions::causal(), AttnOptions::default().with_alibi(PerHead::Host(&slopes))] {
            let cache = PagedKv {
                k_pages: &mut f.k_pages,
                v_pages: &mut f.v_pages,
                block_table: &f.table,
                cache_seqlens: &seqlens,
            };
            let got = reference_forward_paged(&q, cache, None, None, &opts).unwrap();
            let dense = |b: usize| (join(&f.keys[b], lens[b], None), join(&f.values[b], lens[b], None));
            check_against_dense(&got, &q, dense, &opts);
        }
    }
}

#[test]
fn appended_keys_cross_pages_and_are_attended() {
    let (page_size, pages_per_seq) = (4usize, 5usize);
    let lens = [3usize, 0, 8];
    let mut f = fixture(&lens, page_size, pages_per_seq, 7);
    let new = 6;
    let k_new = HostTensor::<bf16>::random_seeded([lens.len(), new, HEADS_KV, D], 1.0, 8);
    let v_new = HostTensor::<bf16>::random_seeded([lens.len(), new, HEADS_KV, D], 1.0, 9);
    let q = HostTensor::<bf16>::random_seeded([lens.len(), 2, HEADS_Q, D], 1.0, 10);
    let seqlens: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
    let opts = AttnOptions::causal();
    let cache =
        PagedKv { k_pages: &mut f.k_pages, v_pages: &mut f.v_pages, block_table: &f.table, cache_seqlens: &seqlens };
    let got = reference_forward_paged(&q, cache, Some(KvAppend { k: &k_new, v: &v_new }), None, &opts).unwrap();
    let dense =
        |b: usize| (join(&f.keys[b], lens[b], Some((&k_new, b))), join(&f.values[b], lens[b], Some((&v_new, b))));
    check_against_dense(&got, &q, dense, &opts);
    // The new keys sit in the pages after each sequence's cached ones.
    for (b, &len) in lens.iter().enumerate() {
        for j in 0..new {
            let t = len + j;
            let page = f.table[b * pages_per_seq + t / page_size] as usize;
            assert_eq!(f.k_pages.get(page, t % page_size, 1, 3), k_new.get(b, j, 1, 3));
            assert_eq!(f.v_pages.get(page, t % page_size, 0, 5), v_new.get(b, j, 0, 5));
        }
    }
}

#[test]
fn a_sequence_without_keys_sees_only_its_sink() {
    let mut f = fixture(&[0, 2], 4, 2, 11);
    let q = HostTensor::<bf16>::random_seeded([2, 1, HEADS_Q, D], 1.0, 12);
    let sinks = [0.5f32, -1.0, 0.0, 2.0];
    let opts = AttnOptions::default().with_sinks(PerHead::Host(&sinks));
    let cache =
        PagedKv { k_pages: &mut f.k_pages, v_pages: &mut f.v_pages, block_table: &f.table, cache_seqlens: &[0, 2] };
    let got = reference_forward_paged(&q, cache, None, None, &opts).unwrap();
    assert!(got.o[..HEADS_Q * D].iter().all(|&x| x == 0.0));
    assert_eq!(&got.lse[..HEADS_Q], &sinks.map(|s| s as f64)[..]);
}

#[test]
fn bad_tables_and_lengths_are_typed_errors() {
    let mut f = fixture(&[3, 3], 4, 2, 13);
    let q = HostTensor::<bf16>::random_seeded([2, 1, HEADS_Q, D], 1.0, 14);
    let num_pages = f.k_pages.shape()[0] as i32;
    let mut out_of_range = f.table.clone();
    out_of_range[2] = num_pages;
    let cases: [(Vec<i32>, Vec<i32>, Arg); 5] = [
        (out_of_range, vec![3, 3], Arg::BlockTable),
        (f.table.clone(), vec![3, 9], Arg::CacheSeqlens),
        (f.table.clone(), vec![-1, 3], Arg::CacheSeqlens),
        (f.table[..3].to_vec(), vec![3, 3], Arg::BlockTable),
        (f.table.clone(), vec![3], Arg::CacheSeqlens),
    ];
    for (table, seqlens, arg) in cases {
        let cache =
            PagedKv { k_pages: &mut f.k_pages, v_pages: &mut f.v_pages, block_table: &table, cache_seqlens: &seqlens };
        let e = reference_forward_paged(&q, cache, None, None, &AttnOptions::default()).unwrap_err();
        let named = match &e {
            Error::BadPagedCache { arg: a, .. } | Error::ShapeMismatch { arg: a, .. } => *a == arg,
            _ => false,
        };
        assert!(named, "{table:?} {seqlens:?}: {e}");
    }
}

/// GPT-NeoX or GPT-J rotation of one head vector at `position` (θ_i = 10000^(−2i/rotary_dim)), in f64
/// from the element values, rounded: what the reference must write.
fn rotated(x: &[f32], position: usize, rotary_dim: usize, interleaved: bool) -> Vec<bf16> {
    let half = rotary_dim / 2;
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for i in 0..half {
        let angle = position as f32 * 10000f32.powf(-2.0 * i as f32 / rotary_dim as f32);
        let (cos, sin) = (angle.cos() as f64, angle.sin() as f64);
        let (d1, d2) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
        let (x1, x2) = (x[d1] as f64, x[d2] as f64);
        out[d1] = x1 * cos - x2 * sin;
        out[d2] = x1 * sin + x2 * cos;
    }
    out.iter().map(|&v| bf16::from_f32(v as f32)).collect()
}

fn tables(positions: usize, rotary_dim: usize) -> (Vec<f32>, Vec<f32>) {
    let half = rotary_dim / 2;
    let angle = |p: usize, i: usize| p as f32 * 10000f32.powf(-2.0 * i as f32 / rotary_dim as f32);
    let cos = (0..positions).flat_map(|p| (0..half).map(move |i| angle(p, i).cos())).collect();
    let sin = (0..positions).flat_map(|p| (0..half).map(move |i| angle(p, i).sin())).collect();
    (cos, sin)
}

#[test]
fn rotary_rotates_new_keys_and_queries_at_their_positions() {
    let (page_size, pages_per_seq) = (4usize, 4usize);
    let lens = [5usize, 2];
    let (new, sq, rotary_dim) = (3usize, 2usize, 16usize);
    let (cos, sin) = tables(32, rotary_dim);
    for interleaved in [false, true] {
        for opts in [AttnOptions::causal(), AttnOptions::default()] {
            let mut f = fixture(&lens, page_size, pages_per_seq, 21);
            let k_new = HostTensor::<bf16>::random_seeded([lens.len(), new, HEADS_KV, D], 1.0, 22);
            let v_new = HostTensor::<bf16>::random_seeded([lens.len(), new, HEADS_KV, D], 1.0, 23);
            let q = HostTensor::<bf16>::random_seeded([lens.len(), sq, HEADS_Q, D], 1.0, 24);
            let seqlens: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
            let rotary = Rotary { cos: &cos, sin: &sin, rotary_dim, interleaved };
            let cache = PagedKv {
                k_pages: &mut f.k_pages,
                v_pages: &mut f.v_pages,
                block_table: &f.table,
                cache_seqlens: &seqlens,
            };
            let append = Some(KvAppend { k: &k_new, v: &v_new });
            let got = reference_forward_paged(&q, cache, append, Some(rotary), &opts).unwrap();
            let head = |t: &HostTensor<bf16>, b: usize, s: usize, h: usize| -> Vec<f32> {
                (0..D).map(|d| t.get(b, s, h, d).to_f32()).collect()
            };
            for (b, &len) in lens.iter().enumerate() {
                // The cache holds each new key rotated at its position len + j.
                for j in 0..new {
                    let t = len + j;
                    let page = f.table[b * pages_per_seq + t / page_size] as usize;
                    for h in 0..HEADS_KV {
                        let want = rotated(&head(&k_new, b, j, h), t, rotary_dim, interleaved);
                        let got_k: Vec<bf16> = (0..D).map(|d| f.k_pages.get(page, t % page_size, h, d)).collect();
                        assert_eq!(got_k, want, "sequence {b} key {t}");
                    }
                }
                // O: the dense reference on the rotated queries and the cache's keys.
                let mut q_rot = HostTensor::<bf16>::filled([1, sq, HEADS_Q, D], bf16::ZERO);
                for i in 0..sq {
                    let position = len + if opts.causal { i } else { 0 };
                    for h in 0..HEADS_Q {
                        for (d, v) in
                            rotated(&head(&q, b, i, h), position, rotary_dim, interleaved).into_iter().enumerate()
                        {
                            q_rot.set(0, i, h, d, v);
                        }
                    }
                }
                // The keys as the cache holds them after the call: the cached ones, then the new ones
                // rotated.
                let total = len + new;
                let gather = |pages: &HostTensor<bf16>| {
                    let mut out = HostTensor::<bf16>::filled([1, total, HEADS_KV, D], bf16::ZERO);
                    for t in 0..total {
                        let page = f.table[b * pages_per_seq + t / page_size] as usize;
                        for (h, d) in (0..HEADS_KV).flat_map(|h| (0..D).map(move |d| (h, d))) {
                            out.set(0, t, h, d, pages.get(page, t % page_size, h, d));
                        }
                    }
                    out
                };
                let (k_all, v_all) = (gather(&f.k_pages), gather(&f.v_pages));
                let want = reference_forward(&q_rot, &k_all, &v_all, &opts).unwrap();
                let rows = sq * HEADS_Q * D;
                assert_eq!(&got.o[b * rows..(b + 1) * rows], &want.o[..], "sequence {b}: O");
            }
        }
    }
}

#[test]
fn bad_rotary_tables_are_typed_errors() {
    let mut f = fixture(&[3], 4, 2, 30);
    let q = HostTensor::<bf16>::random_seeded([1, 1, HEADS_Q, D], 1.0, 31);
    let (cos, sin) = tables(4, 16);
    // Odd rotary dim, one wider than the head, tables too short for position 3 + 0.. , cos/sin of
    // different lengths.
    let cases: [(usize, &[f32], &[f32]); 4] =
        [(15, &cos, &sin), (2 * D, &cos, &sin), (16, &cos[..8 * 3], &sin[..8 * 3]), (16, &cos, &sin[..8])];
    for (rotary_dim, c, s) in cases {
        let cache =
            PagedKv { k_pages: &mut f.k_pages, v_pages: &mut f.v_pages, block_table: &f.table, cache_seqlens: &[3] };
        let rotary = Rotary { cos: c, sin: s, rotary_dim, interleaved: false };
        let e = reference_forward_paged(&q, cache, None, Some(rotary), &AttnOptions::default()).unwrap_err();
        assert!(
            matches!(e, Error::BadPagedCache { arg: Arg::Rotary, .. }),
            "{rotary_dim} {} {}: {e}",
            c.len(),
            s.len()
        );
    }
}

/// The tiled path over a shuffled cache with an append crossing pages, rotary on half the head dim,
/// ALiBi per sequence, sinks and softcap: O within the tiled path's bf16 bound of the reference
/// (relative L2), the LSE within 4e-6 of its scale, and the pages after the call bitwise the
/// reference's.
#[test]
fn tiled_path_matches_the_reference() {
    let (page_size, pages_per_seq) = (7usize, 12usize);
    let lens = [40usize, 0, 13, 64];
    let new = 5;
    let k_new = HostTensor::<bf16>::random_seeded([lens.len(), new, HEADS_KV, D], 1.0, 21);
    let v_new = HostTensor::<bf16>::random_seeded([lens.len(), new, HEADS_KV, D], 1.0, 22);
    let q = HostTensor::<bf16>::random_seeded([lens.len(), 3, HEADS_Q, D], 1.0, 23);
    let seqlens: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
    let half = D / 4;
    let cos: Vec<f32> = (0..80 * half).map(|i| (i as f32 * 0.01).cos()).collect();
    let sin: Vec<f32> = (0..80 * half).map(|i| (i as f32 * 0.01).sin()).collect();
    let rotary = || Some(Rotary { cos: &cos, sin: &sin, rotary_dim: D / 2, interleaved: false });
    let slopes: Vec<f32> = (0..lens.len() * HEADS_Q).map(|i| 0.02 * (i + 1) as f32).collect();
    let sinks = [0.2f32, -0.4, 1.0, 0.0];
    let options = [
        AttnOptions::causal().with_sinks(PerHead::Host(&sinks)),
        AttnOptions::causal().with_softcap(3.0).with_alibi(PerHead::Host(&slopes)),
    ];
    for opts in options {
        let (mut f, mut g) =
            (fixture(&lens, page_size, pages_per_seq, 24), fixture(&lens, page_size, pages_per_seq, 24));
        let append = || Some(KvAppend { k: &k_new, v: &v_new });
        let cache = PagedKv {
            k_pages: &mut f.k_pages,
            v_pages: &mut f.v_pages,
            block_table: &f.table,
            cache_seqlens: &seqlens,
        };
        let want = reference_forward_paged(&q, cache, append(), rotary(), &opts).unwrap();
        let cache = PagedKv {
            k_pages: &mut g.k_pages,
            v_pages: &mut g.v_pages,
            block_table: &g.table,
            cache_seqlens: &seqlens,
        };
        let got = forward_paged(&q, cache, append(), rotary(), &opts).unwrap();
        assert_eq!(got.o.layout, ironflash::Layout::contiguous([lens.len(), 3, HEADS_Q, D]));
        let o = got.o.to_f64_contiguous();
        let num: f64 = o.iter().zip(&want.o).map(|(x, y)| (x - y) * (x - y)).sum();
        let den: f64 = want.o.iter().map(|y| y * y).sum();
        let err = (num / den).sqrt();
        assert!(err < 4.0 * 2f64.powi(-9) + 1e-5, "{opts:?}: O relative L2 {err:.3e}");
        let scale = want.lse.iter().filter(|x| x.is_finite()).fold(1.0f64, |m, x| m.max(x.abs()));
        for (i, (&gl, &w)) in got.lse.iter().zip(&want.lse).enumerate() {
            assert!((gl as f64 - w).abs() <= 4e-6 * scale, "{opts:?}: lse[{i}] {gl} against {w}");
        }
        assert_eq!(f.k_pages.data, g.k_pages.data, "{opts:?}: K pages after the append");
        assert_eq!(f.v_pages.data, g.v_pages.data, "{opts:?}: V pages after the append");
    }
}
