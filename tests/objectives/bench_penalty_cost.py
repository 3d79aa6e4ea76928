"""Cost of one D step (loss + backward) with each D penalty vs none, on the demo DCGAN D (16 px, batch 64).

Run from the repo root: `.venv/bin/python tests/objectives/bench_penalty_cost.py` (not a test: prints ratios).
Spectral norm is off so that the ratios show the penalties' own cost.
"""
import time

import torch

from gandist.config import load_config
from gandist.data.base import DataInfo
from gandist.models.base import BuildContext
from gandist.objectives import losses
from gandist.objectives.augment import prepare_d_input
from gandist.randomness import GlobalRandom
from gandist.objectives.penalties import PenaltyContext, build_penalties
from gandist.registry import ARCHS, resolve

PENALTIES = {"none": None, "r1": "{kind: r1, weight: 1}", "gp": "{kind: gp, weight: 1}",
             "dragan": "{kind: dragan, weight: 1}", "bcr": "{kind: bcr, weight: 1}",
             "diffaugment (no penalty)": None}


def main(n: int = 64, repeats: int = 7) -> None:
    torch.set_num_threads(1)
    cfg = load_config("configs/demo_digits.yaml", ["model.spectral_norm=false", "model.conditional=false"])
    G, D = resolve(ARCHS, "dcgan", "arch")(cfg.model, DataInfo((1, 16, 16), 0), BuildContext())
    real = torch.rand(n, 1, 16, 16) * 2 - 1
    fake = G(torch.randn(n, cfg.model.z_dim)).detach()
    cases = {}
    for name, text in PENALTIES.items():
        penalty = build_penalties(load_config(None, [f"penalties=[{text}]"]).penalties)[0] if text else None
        aug = cfg.augment
        if "diff" in name:
            aug = aug.model_copy(update={"diffaugment": "color,translation,cutout"})
        cases[name] = (penalty, aug)

    def d_step(penalty, aug) -> None:
        rand = GlobalRandom(0, 0, "D", 0, n)

        def d_forward(x, y):
            return D(prepare_d_input(x, y, aug, 0, rand)[0])

        loss = losses.d_loss(cfg.loss, d_forward(real, None), d_forward(fake, None))
        if penalty is not None:
            loss = loss + penalty.loss(PenaltyContext(0, d_forward, D=D, real=real, fake=fake, rand=rand))
        loss.backward()
        D.zero_grad()

    times = {name: [] for name in cases}
    for _ in range(repeats):  # interleaved, so that load on a shared machine hits every case alike
        for name, (penalty, aug) in cases.items():
            t = time.perf_counter()
            for _ in range(3):
                d_step(penalty, aug)
            times[name].append((time.perf_counter() - t) / 3)
    median = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    for name, seconds in median.items():
        print(f"{name:26s} {seconds * 1000:7.1f} ms/step  x{seconds / median['none']:.2f}")


if __name__ == "__main__":
    main()
