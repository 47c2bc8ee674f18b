//! The f64 reference over a paged KV cache (`cpu::paged`): gathering through a shuffled block table
//! gives the dense reference on each sequence's contiguous keys, for page sizes 1, 7 and 16; appended
//! keys land in the pages (across page boundaries) and are attended to; a bad table or bad lengths are
//! typed errors.

use half::bf16;
use ironflash::cpu::paged::{reference_forward_paged, KvAppend, PagedKv};
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
            let got = reference_forward_paged(&q, cache, None, &opts).unwrap();
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
    let got = reference_forward_paged(&q, cache, Some(KvAppend { k: &k_new, v: &v_new }), &opts).unwrap();
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
    let got = reference_forward_paged(&q, cache, None, &opts).unwrap();
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
        let e = reference_forward_paged(&q, cache, None, &AttnOptions::default()).unwrap_err();
        let named = match &e {
            Error::BadPagedCache { arg: a, .. } | Error::ShapeMismatch { arg: a, .. } => *a == arg,
            _ => false,
        };
        assert!(named, "{table:?} {seqlens:?}: {e}");
    }
}
