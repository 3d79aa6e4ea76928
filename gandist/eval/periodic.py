"""Evaluate a generator: sample, extract features across ranks, gather statistics, compute the metrics.

Used by `gandist eval` and by the training loop (`Evaluator.maybe_evaluate` every `eval.every` steps). Batch j of
the evaluation latents comes from a generator seeded by (eval.seed, j) and is processed by rank j mod world_size,
so the sample set is the same whatever the number of ranks; statistics are summed with the strategy's all_reduce.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from gandist.errors import UserError
from gandist.eval.config import LOWER_IS_BETTER, RESULTS, min_samples
from gandist.eval.density_coverage import density_coverage
from gandist.eval.fid import FeatureStats, frechet_distance
from gandist.eval.inception_score import InceptionScoreStats
from gandist.eval.kid import kernel_inception_distance
from gandist.eval.modes import stacked_digits_coverage, toy2d_coverage
from gandist.eval.precision_recall import precision_recall
from gandist.eval.streaming import FeatureBuffer


def default_metrics(data_kind: str) -> list[str]:
    """Metrics computed when eval.metrics is empty: modes for toy2d, modes + fid for stacked digits, else fid."""
    return {"toy2d": ["modes"], "stacked_digits": ["modes", "fid"]}.get(data_kind, ["fid"])


def _stream_seed(*parts) -> int:
    from gandist.randomness import stream_seed

    return stream_seed(*parts)


def _rank_world(strategy) -> tuple[int, int]:
    return (strategy.rank, strategy.world_size) if strategy is not None else (0, 1)


class Evaluator:
    """Periodic evaluation during training and after it (`gandist eval`), with best-metric tracking."""

    def __init__(self, cfg, run_dir: str | None = None, *, metrics: list[str] | None = None, num: int | None = None,
                 features: str | None = None, features_path: str | None = None, reference_stats: str | None = None):
        from gandist.data.sources import build_source

        self.cfg = cfg
        self.ecfg = cfg.eval
        self.run_dir = Path(run_dir) if run_dir else None
        self.kind = cfg.data.kind
        self.metrics = list(metrics or self.ecfg.metrics or default_metrics(self.kind))
        self.num = int(num or self.ecfg.num)
        self.features = features or ("digits" if self.ecfg.features == "auto" else self.ecfg.features)
        self.features_path = features_path or self.ecfg.features_path
        self.source = build_source(cfg.data)
        self._check()
        self._feature_net = None
        self._reference = None  # (FeatureStats | StoredStats, FeatureBuffer | None), computed once
        self.best: tuple | None = None
        self.early_stop = None  # eval.early_stop's stopper (checkpointed as its own part)
        if self.ecfg.early_stop is not None:
            from gandist.eval.early_stop import EarlyStopper

            self.early_stop = EarlyStopper(self.ecfg.early_stop)
        self.lpips = self._lpips() if "ppl" in self.metrics else None  # loaded now: a bad file fails before work
        self.reference_stats = reference_stats or self.ecfg.reference_stats
        self.stored_stats = self._stored_stats() if self.reference_stats and "fid" in self.metrics else None

    def _check(self) -> None:
        """Clear errors for metrics that do not fit the data or the sample count."""
        image_metrics = [m for m in self.metrics if m != "modes"]
        if self.kind == "toy2d" and image_metrics:
            raise UserError(f"eval.metrics: {', '.join(image_metrics)} need images; toy2d data supports only modes")
        if "modes" in self.metrics and self.kind not in ("toy2d", "stacked_digits"):
            raise UserError(f"eval.metrics: modes needs data.kind toy2d or stacked_digits, not {self.kind}")
        if "intra_fid" in self.metrics:
            from gandist.eval.intra_fid import check_intra_fid

            check_intra_fid(self.source)
        for m in self.metrics:
            need = min_samples(m, k=self.ecfg.pr_k, splits=self.ecfg.is_splits)
            if self.num < need:
                raise UserError(f"eval: {m} needs at least {need} samples, got --num/eval.num {self.num}")
        stop = self.ecfg.early_stop
        if stop is not None and RESULTS[stop.metric] not in self.metrics:  # eval.metrics empty: the data's defaults
            raise UserError(f"eval.early_stop.metric={stop.metric} is computed by {RESULTS[stop.metric]!r}, which "
                            f"this run does not evaluate ({', '.join(self.metrics)}); add it to eval.metrics")

    def _lpips(self):
        from gandist.eval.lpips import load_lpips

        e = self.ecfg
        return load_lpips(e.lpips_path, e.vgg16_path, e.lpips_sha256, e.vgg16_sha256)

    def _stored_stats(self):
        """eval.reference_stats, checked against this evaluation's key before any work (mismatch: an error)."""
        from gandist.eval.reference_stats import StoredStats, stats_key

        return StoredStats(self.reference_stats, stats_key(self.cfg.data, self.feature_net("cpu"), self.ecfg.resize))

    # -- feature network and reference statistics ------------------------------------------------------------
    def feature_net(self, device) -> torch.nn.Module:
        """The feature network on `device` (loaded once)."""
        if self._feature_net is None:
            from gandist.eval.features import load_feature_net

            self._feature_net = load_feature_net(self.features, self.features_path, self.ecfg.features_sha256,
                                                 self.ecfg.resize)
        return self._feature_net.to(device)

    def _needs_features(self) -> bool:
        return any(m in self.metrics for m in ("fid", "kid", "is", "pr")) or (
            "modes" in self.metrics and self.kind == "stacked_digits")

    def _buffer_needed(self) -> bool:
        return "kid" in self.metrics or "pr" in self.metrics

    @torch.no_grad()
    def reference(self, strategy, device):
        """Feature statistics of real samples (eval.reference_num of them), computed once per Evaluator."""
        if self._reference is None:
            rank, world = _rank_world(strategy)
            net = self.feature_net(device)
            n = self.ecfg.reference_num or self.num
            bs = self.ecfg.batch_size
            stats = self.stored_stats or FeatureStats(net.feature_dim)
            buffer = FeatureBuffer(min(n, self.ecfg.max_buffer)) if self._buffer_needed() else None
            if self.stored_stats is not None and buffer is None:
                self._reference = (stats, None)
                return self._reference
            it = self.source.loader(0, 1, bs, _stream_seed(self.ecfg.seed, "eval-real"))
            try:
                for j in range(math.ceil(n / bs)):
                    x, _ = next(it)
                    if j % world != rank:
                        continue
                    x = x[: n - j * bs].to(device)
                    f, _ = net(x)
                    if self.stored_stats is None:
                        stats.update(f)
                    if buffer is not None:
                        buffer.update(f, j * bs)
            finally:
                it.close()
            if self.stored_stats is None:
                stats.all_reduce(strategy)
            self._reference = (stats, buffer.gather(strategy) if buffer is not None else None)
        return self._reference

    # -- evaluation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, G: torch.nn.Module, strategy=None, truncation: float = 1.0) -> dict:
        """All configured metrics of generator G (every rank calls it; every rank gets the same dict); truncation
        psi != 1 samples G(z, y, truncation=psi), the same latents at every psi."""
        rank, world = _rank_world(strategy)
        device = next(G.parameters()).device
        start = time.perf_counter()
        was_training = G.training
        G.eval()
        try:
            self._truncation = truncation
            out = self._evaluate(G, strategy, rank, world, device)
        finally:
            G.train(was_training)
        if truncation != 1.0:
            out["truncation"] = truncation
        out["seconds"] = round(time.perf_counter() - start, 3)
        return out

    def _sample(self, G, j: int, n: int, device) -> torch.Tensor:
        """Batch j of the evaluation samples (same latents on any number of ranks)."""
        gen = torch.Generator().manual_seed(_stream_seed(self.ecfg.seed, "eval-z", j))
        z = torch.randn(n, G.z_dim, generator=gen).to(device)
        y = None
        if getattr(G, "num_classes", 0):
            y = torch.randint(G.num_classes, (n,), generator=gen).to(device)
        psi = getattr(self, "_truncation", 1.0)
        return (G(z, y, truncation=psi) if psi != 1.0 else G(z, y)).float()

    def _evaluate(self, G, strategy, rank: int, world: int, device) -> dict:
        bs, n = self.ecfg.batch_size, self.num
        use_features = self._needs_features()
        net = self.feature_net(device) if use_features else None
        stats = FeatureStats(net.feature_dim) if use_features else None
        buffer = FeatureBuffer(min(n, self.ecfg.max_buffer)) if use_features and self._buffer_needed() else None
        is_stats = InceptionScoreStats(net.num_classes, self.ecfg.is_splits) if "is" in self.metrics else None
        modes = FeatureBuffer(n) if "modes" in self.metrics else None
        main_pass = use_features or modes is not None  # intra_fid and ppl sample on their own
        for j in range(math.ceil(n / bs) if main_pass else 0):
            if j % world != rank:
                continue
            x = self._sample(G, j, min(bs, n - j * bs), device)
            if use_features:
                f, logits = net(x)
                stats.update(f)
                if buffer is not None:
                    buffer.update(f, j * bs)
                if is_stats is not None:
                    is_stats.update(logits, j * bs)
            if modes is not None:
                modes.update(x if self.kind == "toy2d" else net.classify_channels(x).float(), j * bs)
        out: dict = {"num": n, "features": self.features if use_features else None}
        if use_features:  # which published convention the number follows; digits always resizes its own way
            out["resize"] = self.ecfg.resize if self.features == "inception" else "digits_native"
        if modes is not None:
            out.update(self._mode_metrics(modes.gather(strategy)))
        if use_features:
            out.update(self._feature_metrics(stats.all_reduce(strategy), buffer.gather(strategy) if buffer else None,
                                             is_stats.all_reduce(strategy) if is_stats else None, strategy, device))
        out.update(self._path_and_class_metrics(G, strategy, device))
        return out

    def _path_and_class_metrics(self, G, strategy, device) -> dict:
        """intra_fid and ppl: passes of their own (per class; latent pairs)."""
        out: dict = {}
        e = self.ecfg
        if "intra_fid" in self.metrics:
            from gandist.eval.intra_fid import intra_fid

            classes = self.source.info.num_classes
            out.update(intra_fid(G, self.source, self.feature_net(device), per_class=e.intra_fid_num or max(
                2, self.num // classes), batch_size=e.batch_size, seed=e.seed,
                truncation=getattr(self, "_truncation", 1.0), strategy=strategy))
            out["features"] = self.features
        if "ppl" in self.metrics:
            from gandist.eval.ppl import filtered_mean, path_lengths, resolve_space

            lpips = self.lpips.to(device)
            lengths = path_lengths(G, lpips, e.ppl_num or self.num, space=e.ppl_space, sampling=e.ppl_sampling,
                                   epsilon=e.ppl_epsilon, crop=e.ppl_crop, batch_size=e.batch_size, seed=e.seed,
                                   strategy=strategy)
            out.update({"ppl": filtered_mean(lengths), "ppl_space": resolve_space(G, e.ppl_space),
                        "ppl_sampling": e.ppl_sampling, "ppl_epsilon": e.ppl_epsilon,
                        "lpips_sha256": lpips.weights_sha256["lpips"], "vgg16_sha256": lpips.weights_sha256["vgg16"]})
        return out

    def _mode_metrics(self, samples: torch.Tensor) -> dict:
        if self.kind == "toy2d":
            return toy2d_coverage(samples, self.source.centres, self.source.std, self.ecfg.min_share)
        return stacked_digits_coverage(samples.long(), self.source.mode_probabilities())

    def _feature_metrics(self, stats, fake_feats, is_stats, strategy, device) -> dict:
        out: dict = {}
        if "fid" in self.metrics or "kid" in self.metrics or "pr" in self.metrics:
            ref_stats, real_feats = self.reference(strategy, device)
        if "fid" in self.metrics:
            out["fid"] = frechet_distance(*ref_stats.mean_cov(), *stats.mean_cov())
            if self.stored_stats is not None:  # which statistics the number is against
                out["reference_stats"], out["reference_stats_sha256"] = self.stored_stats.path, self.stored_stats.sha256
        if "kid" in self.metrics:
            out["kid"], out["kid_std"] = kernel_inception_distance(
                real_feats, fake_feats, self.ecfg.kid_subsets, self.ecfg.kid_subset_size, self.ecfg.seed)
        if "pr" in self.metrics:
            out["precision"], out["recall"] = precision_recall(real_feats, fake_feats, self.ecfg.pr_k)
            # same real k-NN radii as precision (eval.pr_k), so the four numbers describe one manifold estimate
            out["density"], out["coverage"] = density_coverage(real_feats, fake_feats, self.ecfg.pr_k)
        if is_stats is not None:
            out["is"], out["is_std"] = is_stats.score()
        return out

    # -- periodic use -----------------------------------------------------------------------------------------
    def maybe_evaluate(self, step: int, G_ema: torch.nn.Module, strategy) -> dict | None:
        """Metrics when eval.every divides step (appended to RUN_DIR/eval/metrics.jsonl by rank 0), else None."""
        if not self.ecfg.every or step % self.ecfg.every:
            return None
        metrics = {"step": step, **self.evaluate(G_ema, strategy)}
        if self.run_dir is not None and _rank_world(strategy)[0] == 0:
            folder = self.run_dir / "eval"
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(metrics) + "\n")
        if self.early_stop is not None:
            self.early_stop.observe(metrics, step)
        return metrics

    def best_metric(self, metrics: dict) -> str:
        """The metric that ranks checkpoints: eval.best_metric, else fid when computed, else modes."""
        if self.ecfg.best_metric or self.ecfg.early_stop:  # early stopping keeps the best by its own metric
            return self.ecfg.best_metric or self.ecfg.early_stop.metric
        return "fid" if "fid" in metrics else "modes" if "modes" in metrics else next(
            k for k in ("kid", "is", "precision") if k in metrics)

    def _rank_key(self, metrics: dict) -> tuple:
        """Larger is better; modes ties are broken by high-quality share (toy2d) or lower reverse KL."""
        name = self.best_metric(metrics)
        if name not in metrics:
            raise UserError(f"eval.best_metric: {name!r} is not among the computed metrics {sorted(metrics)}")
        value = float(metrics[name])
        key = (-value if name in LOWER_IS_BETTER else value,)
        if name == "modes":
            key += (metrics.get("high_quality", 0.0), -metrics.get("reverse_kl", 0.0))
        return key

    def state_dict(self) -> list | None:
        """The best result so far (checkpointed: a resumed run must not tag a worse checkpoint best)."""
        return list(self.best) if self.best else None

    def load_state_dict(self, state: list | None) -> None:
        self.best = tuple(state) if state else None

    def rank_key(self, metrics: dict) -> list:
        """The key checkpoint.keep_best ranks checkpoints by (larger is better)."""
        return list(self._rank_key(metrics))

    def is_best(self, metrics: dict) -> bool:
        """True when `metrics` beat every earlier result of this Evaluator (lower FID/KID, more modes, ...)."""
        key = self._rank_key(metrics)
        if self.best is None or key > self.best:
            self.best = key
            return True
        return False
