#!/usr/bin/env python3
"""PyTorch peers for the ironflash benchmark suite.

Reads the suite's cases (JSON lines, one `Case` each: grid, pass, b, h, h_kv, n_q, n_k, d, causal,
dtype, and optionally d_v, V's head dim when it differs from d), times `torch.nn.functional.scaled_dot_product_attention` with each backend forced through
`torch.nn.attention.sdpa_kernel` (FLASH_ATTENTION, CUDNN_ATTENTION, EFFICIENT_ATTENTION) and a naive
matmul-softmax-matmul, and prints one JSON line per (case, implementation) with the suite's columns.
With `--impls ...,fa3`, FlashAttention-3 too, through JAX and the `flash_attn3_jax` wheel (head dims up to
128; see `fa3_fn`).

Backward cases (pass "bwd") run each implementation's forward on inputs with requires_grad outside the
timed region, keep its output and an upstream gradient dO, and time `torch.autograd.grad(out, (q, k, v), dO,
retain_graph=True)` alone; peak extra memory is that call's (what the forward saved is already allocated).

Timing is the suite's: inputs uniform in [-1, 1) (never zeros) in ironflash's [B, N, H, D] layout (passed
to PyTorch as the [B, H, N, D] view of it), rotating among input sets whose total exceeds twice the L2
cache, warm-up calls first, then CUDA events recorded before each call and after the last, back to back,
and the median/min/max of the per-call times. Peak extra memory is torch.cuda.max_memory_allocated()
during one call minus what was allocated before it.

Exit status 3 (with a one-line reason on stdout) when PyTorch or a CUDA device is missing.

    python3 benches/peers.py --cases cases.jsonl [--quick] [--impls flash,cudnn,efficient,naive]
"""

import argparse
import json
import math
import sys
import warnings

NO_TORCH_EXIT = 3
IMPLS = ("flash", "cudnn", "efficient", "naive", "fa3")
DEFAULT_IMPLS = ("flash", "cudnn", "efficient", "naive")
# (warmup, min_reps, max_reps, target_ms): the same policies as cli/src/bench/runner.rs.
FULL = (2, 5, 50, 400.0)
QUICK = (1, 3, 20, 100.0)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def emit(rec):
    print(json.dumps(rec), flush=True)


def head_dim_v(case):
    return case.get("d_v", case["d"])


def flops(case):
    """The suite's count (`AttnProblem::{forward,backward}_flops`): 2·(D + D_v) per pair forward,
    2·(3·D + 2·D_v) backward (2.5x the forward's when D_v = D), halved when causal."""
    d, dv = case["d"], head_dim_v(case)
    per_pair = 2.0 * (3 * d + 2 * dv) if case["pass"] == "bwd" else 2.0 * (d + dv)
    f = per_pair * case["b"] * case["h"] * case["n_q"] * case["n_k"]
    return f / 2.0 if case["causal"] else f


def impl_name(name):
    return "fa3-jax" if name == "fa3" else "torch-" + name


def record(name, case, status, note=""):
    rec = {"impl": impl_name(name)}
    rec.update({k: case[k] for k in ("grid", "pass", "b", "h", "h_kv", "n_q", "n_k", "d", "causal", "dtype")})
    if head_dim_v(case) != case["d"]:
        rec["d_v"] = head_dim_v(case)
    rec.update(
        status=status, ms=None, ms_min=None, ms_max=None, reps=0, tflops=None, peak_frac=None, gb_s=None,
        extra_mem_bytes=None, mem_method="torch_peak", note=note,
    )
    return rec


def first_line(e):
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", required=True, help="JSON lines of cases, as the suite writes them")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (the suite's --quick)")
    ap.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help="comma-separated subset of " + ",".join(IMPLS))
    args = ap.parse_args()

    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.attention.bias import causal_lower_right
    except Exception as e:  # ImportError, or a broken install
        print(f"PyTorch not importable: {first_line(e)}")
        return NO_TORCH_EXIT
    if not torch.cuda.is_available():
        print(f"torch {torch.__version__} sees no CUDA device")
        return NO_TORCH_EXIT
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    print(f"torch {torch.__version__}, {props.name}")
    warmup, min_reps, max_reps, target_ms = QUICK if args.quick else FULL
    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }
    wanted = [i for i in args.impls.split(",") if i]
    unknown = [i for i in wanted if i not in IMPLS]
    if unknown:
        ap.error(f"unknown implementation(s) {unknown}; choose from {IMPLS}")

    with open(args.cases) as f:
        cases = [json.loads(line) for line in f if line.strip()]

    def make_sets(case):
        dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[case["dtype"]]
        b, h, hk, nq, nk, d = (case[k] for k in ("b", "h", "h_kv", "n_q", "n_k", "d"))
        dv = head_dim_v(case)
        one = 2 * b * (d * nq * h + (d + dv) * nk * hk)
        free, _ = torch.cuda.mem_get_info()
        count = max(1, min(64, math.ceil(2 * l2 / one), free // 4 // one))

        def rand(shape):
            # [B, N, H, D] storage like ironflash's, seen as [B, H, N, D]; filled in place, so that a 17 GB
            # KV cache does not need temporaries of its size.
            return torch.empty(shape, device="cuda", dtype=dtype).uniform_(-1.0, 1.0).transpose(1, 2)

        return [(rand((b, nq, h, d)), rand((b, nk, hk, d)), rand((b, nk, hk, dv))) for _ in range(count)]

    def sdpa_fn(case):
        nq, nk, causal = case["n_q"], case["n_k"], case["causal"]
        gqa = case["h"] != case["h_kv"]
        if causal and nq != nk:
            # FlashAttention's (and ironflash's) causal mask is aligned bottom-right; is_causal is top-left.
            mask = causal_lower_right(nq, nk)
            return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

    def naive_fn(case):
        nq, nk, d, causal = case["n_q"], case["n_k"], case["d"], case["causal"]
        scale = 1.0 / math.sqrt(d)
        group = case["h"] // case["h_kv"]
        mask = None
        if causal:
            mask = torch.ones(nq, nk, dtype=torch.bool, device="cuda").triu(1 + nk - nq)

        def f(q, k, v):
            if group > 1:
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            s = torch.matmul(q, k.transpose(-2, -1))
            s.mul_(scale)
            if mask is not None:
                s.masked_fill_(mask, float("-inf"))
            return torch.matmul(torch.softmax(s, dim=-1), v)

        return f

    def time_indexed(call, reps):
        events = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
        events[0].record()
        for i in range(reps):
            call(i)
            events[i + 1].record()
        torch.cuda.synchronize()
        return [events[i].elapsed_time(events[i + 1]) for i in range(reps)]

    def bwd_sets(case, fn):
        """Input sets with their forward already run: (leaves, out, dO) each. A set also holds O, dO and
        what autograd saved (for the naive path the N x N scores and probabilities)."""
        dtype = {"bf16": torch.bfloat16, "f16": torch.float16}[case["dtype"]]
        b, h, hk, nq, nk, d = (case[k] for k in ("b", "h", "h_kv", "n_q", "n_k", "d"))
        dv = head_dim_v(case)
        one = 2 * b * ((d + 2 * dv) * nq * h + 2 * (d + dv) * nk * hk) + 6 * b * h * nq * nk
        free, _ = torch.cuda.mem_get_info()
        count = max(1, min(64, math.ceil(2 * l2 / one), free // 4 // one))

        def leaf(shape):
            return torch.empty(shape, device="cuda", dtype=dtype).uniform_(-1.0, 1.0).requires_grad_()

        sets = []
        for _ in range(count):
            leaves = (leaf((b, nq, h, d)), leaf((b, nk, hk, d)), leaf((b, nk, hk, dv)))
            out = fn(*(t.transpose(1, 2) for t in leaves))
            sets.append((leaves, out, torch.empty_like(out).uniform_(-1.0, 1.0)))
        return sets

    def measure_bwd(name, case, fn):
        sets = bwd_sets(case, fn)

        def call(i):
            leaves, out, d_o = sets[i % len(sets)]
            return torch.autograd.grad(out, leaves, d_o, retain_graph=True)

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        grads = call(0)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
        del grads
        warm = time_indexed(call, max(1, warmup))
        one = warm[-1]
        reps = min_reps if one <= 0 else int(min(max_reps, max(min_reps, math.ceil(target_ms / one))))
        times = sorted(time_indexed(call, reps))
        n = len(times)
        median = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
        rec = record(name, case, "ok", f"{len(sets)} input sets rotated" if len(sets) > 1 else "")
        rec.update(
            ms=median, ms_min=times[0], ms_max=times[-1], reps=n,
            tflops=flops(case) / (median * 1e-3) / 1e12, extra_mem_bytes=int(extra),
        )
        return rec

    def time_calls(fn, sets, reps):
        events = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
        events[0].record()
        for i in range(reps):
            q, k, v = sets[i % len(sets)]
            fn(q, k, v)
            events[i + 1].record()
        torch.cuda.synchronize()
        return [events[i].elapsed_time(events[i + 1]) for i in range(reps)]

    def measure(name, case, fn, sets):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        q, k, v = sets[0]
        out = fn(q, k, v)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
        del out
        warm = time_calls(fn, sets, max(1, warmup))
        one = warm[-1]
        reps = min_reps if one <= 0 else int(min(max_reps, max(min_reps, math.ceil(target_ms / one))))
        times = sorted(time_calls(fn, sets, reps))
        n = len(times)
        median = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
        rec = record(name, case, "ok", f"{len(sets)} input sets rotated" if len(sets) > 1 else "")
        rec.update(
            ms=median, ms_min=times[0], ms_max=times[-1], reps=n,
            tflops=flops(case) / (median * 1e-3) / 1e12, extra_mem_bytes=int(extra),
        )
        return rec

    def measure_fa3(case):
        """FlashAttention-3 (the `flash_attn3_jax` wheel) on JAX's own stream, so timed by the wall clock:
        `block_until_ready` after each batch of back-to-back calls, the median over batches of the mean
        per call. The backward is a jitted `jax.vjp` pullback given the forward's residuals. JAX is told
        not to preallocate, so PyTorch's allocator and JAX's share the card."""
        import os
        import time

        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        import jax
        import jax.numpy as jnp
        from flash_attn3_jax import flash_mha

        b, h, hk, nq, nk, d = (case[k] for k in ("b", "h", "h_kv", "n_q", "n_k", "d"))
        dtype = {"bf16": jnp.bfloat16, "f16": jnp.float16}[case["dtype"]]
        key = jax.random.PRNGKey(0)
        one = 2 * d * b * (nq * h + 2 * nk * hk) * (3 if case["pass"] == "bwd" else 1)
        count = max(1, min(16, math.ceil(2 * l2 / one)))
        sets = []
        for i in range(count):
            ks = jax.random.split(jax.random.fold_in(key, i), 4)
            sets.append(tuple(
                jax.random.uniform(kk, shape, dtype, -1.0, 1.0)
                for kk, shape in zip(ks, [(b, nq, h, d), (b, nk, hk, d), (b, nk, hk, d), (b, nq, h, d)])
            ))
        causal = bool(case["causal"])
        fwd = jax.jit(lambda q, k, v: flash_mha(q, k, v, is_causal=causal))
        if case["pass"] == "bwd":
            pulls = []
            for q, k, v, d_o in sets:
                _, pull = jax.vjp(lambda q, k, v: flash_mha(q, k, v, is_causal=causal), q, k, v)
                pulls.append((pull, d_o))
            bwd = jax.jit(lambda pull, d_o: pull(d_o))

            def call(i):
                pull, d_o = pulls[i % len(pulls)]
                return bwd(pull, d_o)
        else:

            def call(i):
                q, k, v, _ = sets[i % len(sets)]
                return fwd(q, k, v)

        jax.block_until_ready(call(0))
        t0 = time.perf_counter()
        jax.block_until_ready([call(i) for i in range(max(1, warmup))])
        one_ms = (time.perf_counter() - t0) * 1e3 / max(1, warmup)
        per_batch = int(min(max_reps, max(min_reps, math.ceil(target_ms / 5 / max(one_ms, 1e-3)))))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready([call(i) for i in range(per_batch)])
            times.append((time.perf_counter() - t0) * 1e3 / per_batch)
        times.sort()
        median = times[len(times) // 2]
        rec = record("fa3", case, "ok", f"wall clock, 5 batches of {per_batch} calls, {len(sets)} input sets")
        rec.update(
            ms=median, ms_min=times[0], ms_max=times[-1], reps=5 * per_batch,
            tflops=flops(case) / (median * 1e-3) / 1e12, mem_method="none",
        )
        return rec

    total = len(cases) * len(wanted)
    done = 0
    for case in cases:
        backward = case["pass"] == "bwd"
        try:
            # Backward sets hold each implementation's own forward, so they are made per implementation.
            sets = None if backward else make_sets(case)
        except torch.OutOfMemoryError as e:
            for name in wanted:
                emit(record(name, case, "oom", "inputs: " + first_line(e)))
            torch.cuda.empty_cache()
            continue
        for name in wanted:
            done += 1
            # A backend that cannot run a shape warns why, then raises "No available kernel": keep the why.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    if name == "fa3":
                        if case["d"] > 128:
                            raise RuntimeError("not supported: the flash_attn3_jax wheel has head dims up to 128")
                        rec = measure_fa3(case)
                    elif name == "naive":
                        fn = naive_fn(case)
                        rec = measure_bwd(name, case, fn) if backward else measure(name, case, fn, sets)
                    else:
                        with sdpa_kernel([backends[name]]):
                            fn = sdpa_fn(case)
                            rec = measure_bwd(name, case, fn) if backward else measure(name, case, fn, sets)
                    error = None
                except torch.OutOfMemoryError as e:
                    rec, error = record(name, case, "oom", first_line(e)), None
                except RuntimeError as e:
                    error = e
                except Exception as e:  # JAX or the wheel missing or failing: a status, not a crash
                    if name != "fa3":
                        raise
                    error = e
            if error is not None:
                msg = first_line(error)
                reasons = [first_line(w.message) for w in caught]
                if reasons:
                    msg += " (" + reasons[0] + ")"
                # A backend that cannot take this shape ("No available kernel", head-dim limits) is not a failure.
                status = "unsupported" if ("No available kernel" in msg or "not supported" in msg.lower()) else "error"
                rec = record(name, case, status, msg[:300])
                # The exception's traceback holds the failed call's frames (a backward case's input sets
                # among them): drop it so that empty_cache below can return their memory.
                error = None
            torch.cuda.empty_cache()
            shape = f"{case['pass']} {case['grid']} B={case['b']} H={case['h']} N={case['n_q']}/{case['n_k']} D={case['d']}"
            shape += " causal" if case["causal"] else ""
            result = f"{rec['ms']:.4f} ms {rec['tflops']:.1f} TFLOP/s" if rec["ms"] else f"{rec['status']}: {rec['note']}"
            log(f"[{done}/{total}] {impl_name(name):<15} {shape}: {result}")
            emit(rec)
        del sets
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
