"""The GPU check of issue 14: one table of what a CPU cannot show, run in one go on one GPU (tools/gpu_check.sh).

    python tools/gpu_check.py                      # CUDA: published widths, bf16 (under 8 minutes on one GPU)
    python tools/gpu_check.py --device cpu --tiny  # CPU smoke run of the same table: tiny nets; CUDA rows skipped
    python tools/gpu_check.py --json gpu_check.json

Rows (each one gandist Trainer, watchdog on, no checkpoints, samples or evaluation; the published configs read a
folder of generated PNGs at their resolution, BigGAN's with 1000 class folders, decoded once into memory):
- biggan-128 / stylegan2-256 s/kimg: configs/biggan_128.yaml (batch 256, no accumulation) and
  configs/stylegan2_256.yaml (batch 32, lazy R1 every 16, path length every 4) at their published widths, bf16, one
  GPU: seconds per 1000 images over whole lazy-regularization periods, after a warm-up (cudnn autotuning). The
  reference is stylegan2-ada-pytorch's 21.6 s/kimg at 256 px on one V100 (its README's table).
- syncs per step: torch.cuda.set_sync_debug_mode("warn") during the steps of each net; every synchronizing CUDA call
  (gandist's and torch's own) warns once; the row gives the most in one step and the mean. Without CUDA the row
  counts gandist's own Tensor conversions instead (tests/synckit.py, as tests/train/test_host_syncs.py does).
- ddp + cross-replica BN on NCCL, world size 1 (tiny BigGAN, whose BN layers all-reduce their statistics over the
  group); ZeRO-2 on CUDA (DeepSpeed, tiny DCGAN); train.compile on CUDA (tiny DCGAN without SN, eager vs compiled
  ms/step). The distributed rows run in child processes (a fresh process group and CUDA context each).
--tiny (any device): the configs' tiny digits versions at batch 4 and two timed steps (amp off on CPU), so a CPU test
can check the table (tests/core/test_gpu_check.py). Without CUDA every CUDA-only row reads "skipped: no CUDA".
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gandist.config import load_config  # noqa: E402

CONFIGS = ROOT / "configs"
ADA_256_S_PER_KIMG = 21.6  # stylegan2-ada-pytorch README: 256 px, 1 x V100
QUIET = ["telemetry.progress=false", "telemetry.sample_every=0", "eval.every=0", "checkpoint.every=1000000",
         "train.steps=1000000", "watchdog.enabled=true"]
# (row, config, overrides at published width, overrides for --tiny, timed steps, tiny timed steps)
NETS = [
    ("biggan-128 bf16 s/kimg", "biggan_128.yaml",
     ["data={kind: folder, path: FOLDER, resolution: 128, channels: 3}", "train.batch_size=256",
      "optim.accumulation=1", "distributed={strategy: single}"],
     "biggan_tiny_digits.yaml", ["train.batch_size=4"], 8, 2),
    ("stylegan2-256 bf16 s/kimg", "stylegan2_256.yaml",
     ["data={kind: folder, path: FOLDER, resolution: 256, channels: 3}", "distributed={strategy: single}"],
     "stylegan2_tiny_digits.yaml", ["train.batch_size=4"], 16, 2),
]
ROWS = [n[0] for n in NETS] + ["syncs per step", "ddp + cross-replica bn, nccl, world size 1",
                               "zero2 on cuda", "train.compile on cuda"]
SKIPPED = "skipped: no CUDA"


def _trainer(config: str, sets: list[str], run_dir: str, device: str):
    from gandist.train.loop import Trainer

    return Trainer(load_config(CONFIGS / config, [*QUIET, *sets, f"train.device={device}"]), run_dir, force=True)


def write_image_folder(root: Path, resolution: int, classes: int, per_class: int) -> None:
    """Smooth random RGB PNGs at `resolution` (no resize on load): one sub-folder per class when classes > 0."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for c in range(max(classes, 1)):
        folder = root / f"class{c:04d}" if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            low = torch.rand(1, 3, 8, 8, generator=generator)
            img = torch.nn.functional.interpolate(low, size=(resolution, resolution), mode="bilinear")[0]
            Image.fromarray((img.permute(1, 2, 0) * 255).byte().numpy()).save(folder / f"{i}.png")


def preload_images(tr) -> None:
    """Decode the folder source's images once into memory: the rows time training, not PNG decoding (the data
    loader has its own benchmark, tools/bench/data.py)."""
    from gandist.data.sources import FolderSource, load_image

    source = tr.source
    if isinstance(source, FolderSource):
        cache = torch.stack([load_image(f, source.resolution, source.channels) for f in source.files])
        source._load = lambda idx: cache[idx]


def _step(tr):
    """One loop iteration as Trainer.run does it (step, watchdog verdict, outputs); returns its Signals."""
    from gandist.train import outputs

    t0 = time.perf_counter()
    tr.lr.apply(tr.step, None)
    sig = tr.train_step()
    tr.check_health(sig)
    outputs.publish(tr, sig, time.perf_counter() - t0)
    return sig


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_steps(tr, steps: int, device: str) -> float:
    """Seconds per step over `steps` loop iterations (tr.last_signals: the last one's Signals)."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.last_signals = _step(tr)
    _sync(device)
    return (time.perf_counter() - t0) / steps


def finite_losses(tr) -> bool:
    """Every loss of the last timed step is a finite number."""
    return all(v == v and abs(v) != float("inf") for v in tr.last_signals.losses.values())


def count_cuda_syncs(tr, steps: int) -> list[int]:
    """Synchronizing CUDA calls per loop iteration, from torch.cuda.set_sync_debug_mode('warn')."""
    per_step = []
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                before = len(caught)
                _step(tr)
                per_step.append(sum("synchroniz" in str(w.message) for w in caught[before:]))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return per_step


def count_gandist_syncs(tr, steps: int) -> list[int]:
    """Host syncs per loop iteration made from gandist's own code (any device): tests/synckit.py's count of the
    Tensor conversion calls (item, tolist, float, ...), the counter tests/train/test_host_syncs.py uses."""
    sys.path.insert(0, str(ROOT / "tests"))
    from synckit import counting_syncs

    with counting_syncs() as counter:
        for _ in range(steps):
            counter.iteration += 1
            _step(tr)
    return [counter.per_iteration[i] for i in range(steps)]


def net_rows(args, device: str) -> dict:
    """The two s/kimg rows and the syncs row (measured on the same trainers)."""
    rows, syncs = {}, {}
    for row, config, sets, tiny_config, tiny_sets, steps, tiny_steps in NETS:
        cfg_name, extra, n = (tiny_config, tiny_sets, tiny_steps) if args.tiny else (config, sets, steps)
        amp = "train.amp=bf16" if device == "cuda" or not args.tiny else "train.amp=off"
        with tempfile.TemporaryDirectory() as tmp:
            if not args.tiny:  # the published configs read shards: a folder of images at their resolution instead
                conditional = "biggan" in config
                write_image_folder(Path(tmp, "images"), 128 if conditional else 256, 1000 if conditional else 0,
                                   1 if conditional else 256)
                extra = [e.replace("FOLDER", str(Path(tmp, "images"))) for e in extra]
            tr = _trainer(cfg_name, [*extra, amp], f"{tmp}/run", device)
            preload_images(tr)
            try:
                lazy = max([p.every for p in tr.penalties] + [1])
                timed_steps(tr, 1 if args.tiny else max(4, lazy), device)  # warm-up: autotuning, first lazy steps
                seconds = timed_steps(tr, n, device)
                batch = tr.cfg.train.batch_size * tr.cfg.optim.d_steps
                s_per_kimg = seconds * 1000 / batch
                ref = f"stylegan2-ada-pytorch {ADA_256_S_PER_KIMG} s/kimg (256 px, 1 x V100)" if "256" in row else ""
                if not finite_losses(tr):
                    raise RuntimeError(f"{cfg_name}: a loss is not finite after {n} steps")
                rows[row] = {"result": f"{s_per_kimg:.2f} s/kimg ({batch} img/step, {seconds * 1e3:.0f} ms/step)",
                             "value": s_per_kimg, "note": f"{'tiny: ' if args.tiny else ''}configs/{cfg_name}, amp {amp.split('=')[1]}, {n} timed "
                                     f"steps; {ref}".rstrip("; ")}
                count = count_cuda_syncs if device == "cuda" else count_gandist_syncs
                syncs[cfg_name] = count(tr, lazy if lazy > 1 else 4)
            finally:
                tr.close()
    cells = [f"{Path(c).stem}: max {max(v)}, mean {sum(v) / len(v):.1f}" for c, v in syncs.items()]
    how = ("" if device == "cuda" else f"{SKIPPED} for the sync debug mode; counted instead: gandist's own "
           "Tensor conversions (tests/synckit.py); ")
    rows[ROWS[2]] = {"result": "; ".join(cells), "value": dict(syncs),
                     "note": how + "target: a constant few (issue 14: <= 4 from gandist's own code)"}
    return rows


def compile_row(device: str) -> dict:
    """Tiny DCGAN without SN: eager vs train.compile ms/step on CUDA."""
    if device != "cuda":
        return {"result": SKIPPED, "note": "on CPU: tools/bench/models.py --loop-compile (docs/benchmarks.md)"}
    sets = ["model.spectral_norm=false", "train.batch_size=64"]
    out = {}
    for compiled in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            tr = _trainer("demo_digits.yaml", [*sets, f"train.compile={str(compiled).lower()}"], f"{tmp}/run", device)
            try:
                timed_steps(tr, 3, device)  # compilation happens here
                out[compiled] = timed_steps(tr, 20, device)
            finally:
                tr.close()
    return {"result": f"eager {out[False] * 1e3:.1f} ms/step, compiled {out[True] * 1e3:.1f} ms/step "
                      f"({out[False] / out[True]:.2f}x)", "value": {"eager_s": out[False], "compiled_s": out[True]},
            "note": "demo DCGAN, model.spectral_norm=false, batch 64"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_child(kind: str, out: str) -> None:
    """Child process: a few steps of one distributed row on cuda:0, world size 1; writes its row as JSON."""
    if kind == "ddp":
        config, sets = "biggan_tiny_digits.yaml", ["distributed.strategy=ddp", "distributed.backend=nccl",
                                                   "distributed.cross_replica_bn=true", "train.batch_size=16"]
    else:
        config, sets = "demo_digits.yaml", ["distributed.strategy=zero2", "distributed.backend=nccl",
                                            "train.batch_size=64"]
    with tempfile.TemporaryDirectory() as tmp:
        tr = _trainer(config, sets, f"{tmp}/run", "cuda")
        try:
            timed_steps(tr, 2, "cuda")
            seconds = timed_steps(tr, 5, "cuda")
            tr.strategy.state_dict()  # the checkpoint state (ZeRO: gathered from its partitions) must come out
            row = {"result": f"{'ok' if finite_losses(tr) else 'FAILED (non-finite loss)'}: {seconds * 1e3:.1f} "
                             f"ms/step, backend "
                             f"{torch.distributed.get_backend()}", "value": seconds,
                   "note": f"configs/{config}, " + ", ".join(sets)}
        finally:
            tr.close()
    Path(out).write_text(json.dumps(row))


def distributed_row(kind: str, device: str, timeout: float) -> dict:
    if device != "cuda":
        return {"result": SKIPPED, "note": "the multi-process tests run these on gloo"}
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/row.json"
        env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(_free_port()), "DS_ACCELERATOR": "cuda"}
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", kind, out], env=env, timeout=timeout,
                                  capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"result": f"FAILED: no result within {timeout:.0f} s"}
        if proc.returncode != 0 or not Path(out).exists():
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"result": f"FAILED (exit {proc.returncode}): {last[0][:160]}"}
        return json.loads(Path(out).read_text())


def run_checks(args) -> dict:
    """Every row of the table, in ROWS order; a failing check fills its row with the error, not the run."""
    device = args.device
    rows: dict[str, dict] = {}
    checks = [("nets", lambda: net_rows(args, device)),
              (ROWS[3], lambda: distributed_row("ddp", device, args.child_timeout)),
              (ROWS[4], lambda: distributed_row("zero2", device, args.child_timeout)),
              (ROWS[5], lambda: compile_row(device))]
    for name, check in checks:
        try:
            result = check()
        except Exception as err:  # noqa: BLE001  (one broken row must not hide the others)
            message = f"FAILED: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
            result = {r: {"result": message} for r in ROWS[:3]} if name == "nets" else {"result": message}
        rows.update(result if name == "nets" else {name: result})
    return {r: rows[r] for r in ROWS}


def format_table(rows: dict, header: str) -> str:
    lines = [header, "| check | result | note |", "|---|---|---|"]
    lines += [f"| {name} | {row['result']} | {row.get('note', '')} |" for name, row in rows.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--tiny", action="store_true", help="tiny digits nets, batch 4, two timed steps (a CPU smoke run)")
    p.add_argument("--child-timeout", type=float, default=150.0, help="seconds per distributed row")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--child", nargs=2, metavar=("KIND", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        distributed_child(*args.child)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible; use --device cpu --tiny for the CPU smoke run")
        return 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none"
    header = (f"gandist GPU check: device {args.device} ({gpu}), torch {torch.__version__}, "
              f"{'tiny nets' if args.tiny else 'published widths'}")
    t0 = time.perf_counter()
    rows = run_checks(args)
    print(format_table(rows, header + f", {time.perf_counter() - t0:.0f} s"), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "rows": rows}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
