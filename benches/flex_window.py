#!/usr/bin/env python3
"""PyTorch peers for a sliding window, the case `cli/examples/score_timing.rs` measures for ironflash:
B = 1, H = 16, N = 32K, D = 128, bf16, causal with a window of 4096 keys to the left (key j visible to
query i iff i - 4096 <= j <= i). SDPA has no window; FlexAttention does (a block mask skips the blocks
outside it), and so does FlashAttention-3 (`window_size`; the `flash_attn3_jax` wheel, through JAX,
when it is importable). Prints one markdown table: FlexAttention and FlashAttention-3 with the window
and dense causal, SDPA's flash and cuDNN backends dense causal, forward and backward (the backward
call alone: `torch.autograd.grad`, or the jitted `jax.vjp` pullback), TFLOP/s on the visible (computed)
pairs, 4·H·D per pair (x2.5 for the backward).

Inputs uniform in [-1, 1) (never zeros); warm-up calls, then the median of CUDA-event-timed calls (JAX:
the median over rounds of `--reps` back-to-back calls timed on the host around `block_until_ready`).

    python3 benches/flex_window.py [--n 32768] [--window 4096]
"""

import argparse
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--window", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        print(f"skipped: PyTorch with FlexAttention is missing ({e})")
        sys.exit(3)
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        sys.exit(3)

    b, h, n, d, w = 1, 16, args.n, 128, args.window
    dev = "cuda"

    def rand():
        return (torch.rand(b, h, n, d, device=dev, dtype=torch.bfloat16) * 2 - 1).requires_grad_()

    q, k, v, d_o = rand(), rand(), rand(), rand().detach()

    def windowed(bb, hh, qi, kj):
        return (kj <= qi) & (qi - kj <= w)

    def causal(bb, hh, qi, kj):
        return kj <= qi

    flex = torch.compile(flex_attention)
    masks = {
        "window": create_block_mask(windowed, None, None, n, n, device=dev),
        "causal": create_block_mask(causal, None, None, n, n, device=dev),
    }
    pairs = {
        "window": sum(min(i, w) + 1 for i in range(n)),
        "causal": n * (n + 1) // 2,
    }

    def timed(fn):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        times.sort()
        return times[len(times) // 2]

    def run(name, forward, kind):
        out = forward()
        f = timed(forward)
        bw = timed(lambda: torch.autograd.grad(out, (q, k, v), d_o, retain_graph=True))
        flops = 4 * h * d * pairs[kind] * b
        print(f"| {name} | {f:.3f} | {flops / f / 1e9:.1f} | {bw:.3f} | {2.5 * flops / bw / 1e9:.1f} |", flush=True)

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}; B={b} H={h} N={n} D={d} bf16")
    print("| implementation | fwd ms | fwd TFLOP/s (visible) | bwd ms | bwd TFLOP/s (visible) |")
    print("|---|---:|---:|---:|---:|")
    run(f"FlexAttention, window ({w}, 0)", lambda: flex(q, k, v, block_mask=masks["window"]), "window")
    run("FlexAttention, dense causal", lambda: flex(q, k, v, block_mask=masks["causal"]), "causal")
    for backend, label in [(SDPBackend.FLASH_ATTENTION, "SDPA flash"), (SDPBackend.CUDNN_ATTENTION, "SDPA cuDNN")]:
        with sdpa_kernel(backend):
            run(
                f"{label}, dense causal",
                lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                "causal",
            )
    fa3_rows(b, h, n, d, w, pairs, args.reps)


def fa3_rows(b, h, n, d, w, pairs, reps):
    """FlashAttention-3 (the JAX wheel) with the window and dense causal, one table row each."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax
        import jax.numpy as jnp
        from flash_attn3_jax import flash_mha
    except ImportError as e:
        print(f"(FlashAttention-3 rows skipped: {e})")
        return
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v, d_o = (jax.random.uniform(kk, (b, n, h, d), jnp.bfloat16, -1.0, 1.0) for kk in keys)

    def host_timed(call):
        jax.block_until_ready(call())
        rounds = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready([call() for _ in range(reps)])
            rounds.append((time.perf_counter() - t0) * 1e3 / reps)
        rounds.sort()
        return rounds[len(rounds) // 2]

    for name, kind, window in [(f"FlashAttention-3, window ({w}, 0)", "window", (w, 0)),
                               ("FlashAttention-3, dense causal", "causal", (-1, -1))]:
        def attn(q, k, v, window=window):
            return flash_mha(q, k, v, is_causal=True, window_size=window)

        fwd = jax.jit(attn)
        _, pull = jax.vjp(attn, q, k, v)
        bwd = jax.jit(lambda pull, d_o: pull(d_o))
        f = host_timed(lambda: fwd(q, k, v))
        bw = host_timed(lambda: bwd(pull, d_o))
        flops = 4 * h * d * pairs[kind] * b
        print(f"| {name} | {f:.3f} | {flops / f / 1e9:.1f} | {bw:.3f} | {2.5 * flops / bw / 1e9:.1f} |", flush=True)


if __name__ == "__main__":
    main()
