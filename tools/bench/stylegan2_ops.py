"""Forward + backward time and peak memory of each StyleGAN2 op variant, so the automatic choice can be re-made.

    python tools/bench/stylegan2_ops.py                       # CPU, one thread, the default sizes (about a minute)
    python tools/bench/stylegan2_ops.py --device cuda         # GPU: the same table, times synchronized
    python tools/bench/stylegan2_ops.py --sizes 8x256x16 --no-ref --no-grad

Ops (gandist/nn/modulated_conv.py, gandist/nn/equalized.py): the modulated 3x3 conv, the modulated 3x3 up-conv
(2x) and the 1x1 ToRGB, each as 'activation' (scale activations, shared conv, demodulate the output), 'fused'
(per-sample weights, grouped conv / bmm) and 'ref' (per-sample loop, upsample then conv); D's 2x down-conv as 'fast'
(blur, stride-2 conv) and 'ref' (conv, then FIR + decimate). A size NxCxH is batch x channels (in = out; ToRGB:
3 out) x input px.
`--no-grad` adds forward-only rows (the inference choice). 'auto' names what choose_impl picks for that row.

Peak memory is the most memory held above the start of one forward + backward: on CUDA
torch.cuda.max_memory_allocated; on CPU the peak of the running sum of torch.profiler's per-op memory
(profile_memory=True), so op granularity: a temporary freed inside one op is not counted.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gandist.nn.equalized import conv_down2, fir_kernel  # noqa: E402
from gandist.nn.modulated_conv import choose_impl, modulated_conv2d  # noqa: E402

DEFAULT_SIZES = ["32x64x8", "8x128x16", "8x256x16"]


def op_variants(no_ref: bool):
    """[(op name, variant, fn(x, weight, styles) -> y, kernel size)]."""
    ops = []
    for name, k, up, demod in (("modconv3x3", 3, 1, True), ("modconv3x3_up2", 3, 2, True),
                               ("torgb1x1", 1, 1, False)):
        for impl in ("activation", "fused", "ref"):
            if impl == "ref" and no_ref:
                continue
            fn = lambda x, w, s, i=impl, u=up, d=demod: modulated_conv2d(x, w, s, d, up=u, impl=i)  # noqa: E731
            ops.append((name, impl, fn, k))
    for impl in ("fast", "ref"):
        if impl == "ref" and no_ref:
            continue
        ops.append(("down_conv3x3", impl, lambda x, w, s, i=impl: conv_down2(x, w, fir_kernel().to(x), impl=i), 3))
    return ops


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_once(fn, inputs, grad: bool) -> None:
    """One forward (+ backward of the output's sum)."""
    if grad:
        fn(*inputs).sum().backward()
    else:
        with torch.no_grad():
            fn(*inputs)


def median_ms(fn, inputs, grad: bool, device: str, iters: int) -> float:
    """Median milliseconds of run_once after one warm-up."""
    run_once(fn, inputs, grad)
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        run_once(fn, inputs, grad)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_mib(fn, inputs, grad: bool, device: str) -> float:
    """Peak MiB held above the start during one run (see the module docstring for how, per device)."""
    for t in inputs:
        t.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_once(fn, inputs, grad)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    from torch.profiler import profile  # noqa: PLC0415

    with profile(profile_memory=True) as prof:
        run_once(fn, inputs, grad)
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2 ** 20


def make_inputs(size: str, name: str, k: int, device: str):
    """x [N, C, H, H], weight [C, C, k, k] (ToRGB: [3, C, 1, 1]), styles [N, C], all requiring grad."""
    n, c, h = (int(v) for v in size.split("x"))
    x = torch.randn(n, c, h, h, device=device)
    w = torch.randn(3 if name.startswith("torgb") else c, c, k, k, device=device)
    s = torch.randn(n, c, device=device)
    return [t.requires_grad_() for t in (x, w, s)]


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="NxCxH: batch x channels x input px")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads")
    ap.add_argument("--no-ref", action="store_true", help="skip the slow per-sample reference loops")
    ap.add_argument("--no-grad", action="store_true", help="also time forward only (inference)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here; run without it for the CPU table")
        return 2
    torch.set_num_threads(args.threads)
    modes = [True, False] if args.no_grad else [True]
    print(f"torch {torch.__version__}, {args.device}, {args.threads} thread(s), median of {args.iters}")
    print("| op | size | mode | variant | ms | peak MiB | auto |")
    print("|---|---|---|---|---:|---:|---|")
    for size in args.sizes:
        for name, impl, fn, k in op_variants(args.no_ref):
            inputs = make_inputs(size, name, k, args.device)
            for grad in modes:
                ms = median_ms(fn, inputs, grad, args.device, args.iters)
                mib = peak_mib(fn, inputs, grad, args.device)
                mode = "fwd+bwd" if grad else "fwd"
                auto = _auto(name, inputs, grad)
                print(f"| {name} | {size} | {mode} | {impl} | {ms:.2f} | {mib:.1f} | {auto} |", flush=True)
    return 0


def _auto(name: str, inputs, grad: bool) -> str:
    if name.startswith("down"):
        return "fast"
    with torch.set_grad_enabled(grad):
        return choose_impl(*inputs)


if __name__ == "__main__":
    sys.exit(main())
