"""Policy: the Watchdog the loop drives (inject -> observe -> resolve -> rollback), healthy marks, giving up.

Per G step the loop calls `before_step` (fault injection), `observe` (monitors + detectors -> local verdict), then
all-reduces the worst verdict over ranks and calls `resolve` with it on every rank. Because every rank resolves the
same agreed verdict with the same history, every rank returns the same Action (or raises WatchdogGaveUp) together.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from gandist.errors import WatchdogGaveUp
from gandist.train.signals import Signals
from gandist.watchdog.config import WatchdogConfig
from gandist.watchdog.detectors import DIVERGED, OK, VERDICTS, Finding, build_detectors, flatten, run_detectors
from gandist.watchdog.monitors import SigmaMonitor, ema_distance


@dataclass
class Mitigation:
    """What the loop changes after a rollback: lr factor (cumulative), batches to skip, new noise seed, R1 factor."""

    lr_scale: float = 1.0
    skip_batches: int = 0
    reseed: bool = False
    r1_scale: float = 1.0


@dataclass
class Action:
    """Roll back: why, the signal values behind it, and the mitigation to apply."""

    reason: str
    details: dict = field(default_factory=dict)
    mitigation: Mitigation = field(default_factory=Mitigation)


class Watchdog:
    """Monitors, detectors and the rollback policy of one rank."""

    def __init__(self, cfg: WatchdogConfig, *, rank: int, world_size: int) -> None:
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.detectors = build_detectors(cfg)
        self.sigma_G = SigmaMonitor(cfg.sigma_every)
        self.sigma_D = SigmaMonitor(cfg.sigma_every)
        self.rollbacks: list[dict] = []  # {"index", "step", "reason", "details", "mitigation"}, in order
        self.injected = False
        self.bad_steps: list[int] = []  # steps whose agreed verdict was not ok (since observed_from)
        self.observed_from: int | None = None  # first step observed in this stretch of history
        self._finding: Finding | None = None  # this rank's latest finding, for resolve's reason
        self._ema_distance: float | None = None

    # -- fault injection ------------------------------------------------------------------------------------------
    def before_step(self, step: int, strategy, lr) -> None:
        """Inject the configured fault at cfg.inject.step (once, or on every replay when inject.repeat).

        `lr`: the learning rates' owner (gandist/train/lr.py), whose override() an lr spike calls."""
        inject = self.cfg.inject
        if inject.kind == "none" or step != inject.step or (self.injected and not inject.repeat):
            return
        self.injected = True
        if inject.kind == "lr_spike":
            lr.override(inject.factor)
            return
        with torch.no_grad():
            weights = [p for p in strategy.module("D").parameters() if p.numel() > 0 and p.is_floating_point()]
            if inject.kind == "nan":
                weights[0].view(-1)[0] = float("nan")
            elif inject.kind == "d_noise":
                generator = torch.Generator().manual_seed(1_000_003 + step)  # same noise on every rank
                for p in weights:
                    noise = torch.randn(p.shape, generator=generator) * inject.factor
                    p.add_(noise.to(device=p.device, dtype=p.dtype))

    # -- per step -------------------------------------------------------------------------------------------------
    def observe(self, signals: Signals, G: nn.Module, D: nn.Module, G_ema: nn.Module | None) -> int:
        """Fill signals.sigma and signals.ema_distance, run the detectors; return this rank's verdict code."""
        step = signals.step
        if self.observed_from is None:
            self.observed_from = step
        signals.sigma.update(self.sigma_G.measure("G", G, step))
        signals.sigma.update(self.sigma_D.measure("D", D, step))
        if G_ema is not None and (step % self.cfg.ema_every == 0 or self._ema_distance is None):
            self._ema_distance = ema_distance(G, G_ema)
        signals.ema_distance = self._ema_distance
        self._finding = run_detectors(self.detectors, step, flatten(signals), self.cfg.warmup)
        return OK if self._finding is None else self._finding.verdict

    def resolve(self, agreed: int, signals: Signals) -> Action | None:
        """Act on the verdict agreed over ranks: None unless diverged; raises WatchdogGaveUp past max_rollbacks."""
        signals.verdict = VERDICTS[agreed]
        if agreed == OK:
            return None
        self.bad_steps.append(signals.step)
        if len(self.bad_steps) > 10_000:  # a long run of warnings: only recent steps can matter for healthy()
            del self.bad_steps[:-5_000]
        if agreed < DIVERGED:
            return None
        finding = self._finding if self._finding is not None and self._finding.verdict == DIVERGED else None
        reason = finding.reason if finding else "diverged on another rank"
        details = dict(finding.details) if finding else {}
        details.update(self._summary(signals))
        details["step"] = signals.step
        mitigation = self._mitigation()
        record = {"index": len(self.rollbacks) + 1, "step": signals.step, "reason": reason, "details": details,
                  "mitigation": asdict(mitigation)}
        recent = [r for r in self.rollbacks if r["step"] > signals.step - self.cfg.rollback_window]
        if len(recent) >= self.cfg.max_rollbacks:
            raise WatchdogGaveUp(self.report(record, recent))
        self.rollbacks.append(record)
        return Action(reason=reason, details=details, mitigation=mitigation)

    def _mitigation(self) -> Mitigation:
        m = self.cfg.mitigation
        return Mitigation(lr_scale=m.lr_scale, skip_batches=m.skip_batches, reseed=m.reseed, r1_scale=m.r1_scale)

    @staticmethod
    def _summary(signals: Signals) -> dict:
        out = {f"loss/{k}": float(v) for k, v in signals.losses.items()}
        out.update({f"grad_norm/{k}": float(v) for k, v in signals.grad_norm.items()})
        out.update({"d_real": float(signals.d_real), "d_fake": float(signals.d_fake), "nonfinite": signals.nonfinite})
        return out

    # -- checkpoints and rollback ---------------------------------------------------------------------------------
    def healthy(self, step: int) -> bool:
        """True when every step of the healthy_window before `step` was observed and agreed ok."""
        start = step - self.cfg.healthy_window
        if self.observed_from is None or self.observed_from > start + 1:
            return False
        return not any(start < s <= step for s in self.bad_steps)

    def after_rollback(self, restored_step: int) -> None:
        """Forget the abandoned future (steps after restored_step) and reset detector windows and monitors."""
        self.bad_steps = [s for s in self.bad_steps if s <= restored_step]
        for detector in self.detectors:
            detector.reset()
        self.sigma_G.reset()
        self.sigma_D.reset()
        self._ema_distance = None
        self._finding = None

    def report(self, final: dict | None = None, recent: list[dict] | None = None) -> str:
        """A readable account of every rollback and, when giving up, of the divergence that ended the run."""
        lines = [f"gandist watchdog: {len(self.rollbacks)} rollback(s) so far."]
        for i, r in enumerate(self.rollbacks, 1):
            lines.append(f"  rollback {i}: step {r['step']}: {r['reason']} (mitigation {r['mitigation']})")
        if final is not None:
            lines.append(
                f"Gave up at step {final['step']}: {final['reason']}. That is {len(recent or []) + 1} divergences "
                f"within {self.cfg.rollback_window} steps, more than watchdog.max_rollbacks={self.cfg.max_rollbacks}."
            )
            lines.append("Signals at the last divergence: " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(final["details"].items())[:12]
            ))
            lines.append(
                "What to try: lower optim.g.lr / optim.d.lr, add or raise an R1 penalty, enable spectral norm in D, "
                "or raise watchdog.max_rollbacks; the newest healthy checkpoint is intact in the run dir."
            )
        return "\n".join(lines)

    def state_dict(self) -> dict:
        """Rollback history, injection flag and healthy bookkeeping (saved in checkpoints)."""
        return {
            "rollbacks": [dict(r) for r in self.rollbacks],
            "injected": self.injected,
            "bad_steps": list(self.bad_steps[-1000:]),
            "observed_from": self.observed_from,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore; a rollback's restore keeps what this process already knows (history only grows)."""
        known = {r["index"] for r in self.rollbacks}
        self.rollbacks += [dict(r) for r in state.get("rollbacks", []) if r["index"] not in known]
        self.rollbacks.sort(key=lambda r: r["index"])
        self.injected = self.injected or bool(state.get("injected", False))
        saved_from = state.get("observed_from")
        if self.observed_from is None or (saved_from is not None and saved_from < self.observed_from):
            self.observed_from = saved_from
        self.bad_steps = sorted(set(self.bad_steps) | set(state.get("bad_steps", [])))
