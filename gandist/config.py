"""The experiment config: pydantic sections, YAML loading, `--set a.b=c` overrides, readable errors.

Each subsystem owns its section's model (models/config.py, data/config.py, objectives/config.py, watchdog/config.py,
telemetry/config.py, eval/config.py); this module composes them and turns validation errors into one line each.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from gandist import config_checks
from gandist.configbase import Section
from gandist.data.config import DataConfig, Toy2DConfig
from gandist.errors import ConfigError  # noqa: F401  (raised here; importable from gandist.config as before)
from gandist.eval.config import EvalConfig
from gandist.models.config import MLPConfig, ModelConfig
from gandist.objectives.config import AugmentConfig, LossConfig, PenaltyConfig
from gandist.optim import ADAM_MOMENTS, AdamConfig, Impl, NetOptimConfig, check_impl  # noqa: F401
from gandist.telemetry.config import TelemetryConfig
from gandist.watchdog.config import WatchdogConfig


NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # not "nan"/"inf": those stay strings


class OptimConfig(Section):
    """Optimizers (separate for G and D: TTUR), D steps per G step, accumulation and clipping."""

    g: NetOptimConfig = Field(default_factory=lambda: NetOptimConfig(lr=1e-4), description="G's optimizer.")
    d: NetOptimConfig = Field(default_factory=lambda: NetOptimConfig(lr=4e-4),
                              description="D's optimizer (TTUR: usually a higher lr).")
    impl: Impl = Field("auto", description="Optimizer kernels: auto (fused on CUDA where torch has it, else "
                       "foreach), foreach, fused, loop (one tensor at a time).")
    d_steps: int = Field(1, ge=1, description="D steps per G step.")
    accumulation: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    grad_clip: float = Field(0.0, ge=0, description="Clip each net's gradient norm to this (0: off).")
    unrolled_steps: int = Field(
        0, ge=0, description="Unrolled GAN (Metz et al. 2017): G's loss is taken against D after this many extra "
        "look-ahead D updates (on the step's last real batch, fresh noise each), then D is restored (0: off).")
    unrolled_form: Literal["exact", "copy"] = Field(
        "exact", description="exact: G's gradient flows through the look-ahead updates (the paper's; "
        "torch.func.functional_call, Adam/AdamW/SGD updates written differentiably); copy: the look-ahead "
        "updates are D's real optimizer steps, undone after G's step (no gradient through them, cheaper).")
    lr_decay_start: float = Field(
        1.0, gt=0, le=1, description="Fraction of train.steps after which both learning rates decay linearly "
        "towards 0 at train.steps (1: constant). Annealing sharpens a converged G (toy mode benchmarks).")


class EMAConfig(Section):
    """Exponential moving average of G's weights (used for samples and evaluation)."""

    enabled: bool = Field(True, description="Keep an EMA copy of G.")
    decay: float = Field(0.999, ge=0, lt=1, description="EMA decay per G step.")
    start_step: int = Field(0, ge=0, description="Copy G into the EMA until this step, then average.")
    rampup: float | None = Field(None, gt=0, description=(
        "stylegan2-ada's ema_rampup (it uses 0.05): the EMA half-life in images grows as rampup x images seen "
        "until it reaches decay's own (None: a fixed decay)."))


class TrainConfig(Section):
    """The training run."""

    steps: int = Field(1000, ge=1, description="Total G steps.")
    batch_size: int = Field(64, ge=1, description="Global batch size (all ranks, all accumulation micro-batches).")
    amp: Literal["off", "bf16", "fp16"] = Field("off", description="Mixed precision: bf16 autocast (CPU/GPU) or fp16 + GradScaler (GPU).")
    deterministic: Literal["auto"] | bool = Field("auto", description=(
        "auto: deterministic on CPU (bitwise reproducible), fast on CUDA (cudnn.benchmark, TF32); true: "
        "deterministic algorithms everywhere (sets CUBLAS_WORKSPACE_CONFIG on CUDA); false: fast everywhere."))
    compile: bool = Field(False, description="torch.compile G and D (single and ddp; checkpoints stay plain).")
    compile_backend: Literal["inductor", "aot_eager"] = Field("inductor", description=(
        "train.compile's backend: inductor generates kernels (on CPU it needs a C++ compiler, g++ or $CXX); "
        "aot_eager captures the same forward and backward graphs and runs them with torch's kernels (no speed-up, "
        "seconds instead of minutes to compile: tells a graph-capture problem from a code-generation one)."))
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available.")
    channels_last: bool = Field(False, description="Use channels_last memory format for image nets.")
    ema: EMAConfig = Field(default_factory=EMAConfig, description="EMA of G.")
    init_from: str | None = Field(None, description=(
        "Fine-tune: RUN_DIR_OR_URL[@step|best] whose G, D and G-EMA weights this run starts from (no optimizer "
        "state, step or data position); the model must match."))


class ZeroConfig(Section):
    """DeepSpeed ZeRO options."""

    offload_optimizer: bool = Field(False, description="Keep optimizer state in CPU memory.")
    offload_params: bool = Field(False, description="ZeRO-3 only: keep parameters in CPU memory.")


class DistributedConfig(Section):
    """How the loop is distributed (launch with torchrun or --ray)."""

    strategy: Literal["single", "ddp", "zero1", "zero2", "zero3"] = Field("single", description="Data-parallel strategy.")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="Process-group backend (auto: nccl on GPU, gloo on CPU).")
    cross_replica_bn: bool = Field(False, description="Batch-norm statistics over all ranks.")
    zero: ZeroConfig = Field(default_factory=ZeroConfig, description="ZeRO options.")
    max_failures: int = Field(3, ge=0, description="Ray: worker-group restarts before giving up.")


class CheckpointConfig(Section):
    """Checkpointing."""

    every: int = Field(500, ge=1, description="Save every k G steps (and at the end).")
    keep_last: int = Field(3, ge=1, description="Checkpoints kept (healthy and best ones are kept too).")
    url: str | None = Field(None, description="fsspec URL for checkpoints (default: RUN_DIR/checkpoints).")
    keep_best: int = Field(1, ge=1, description=(
        "Checkpoints kept by evaluation rank (eval.best_metric), listed best first in best-ranked.json; "
        "BigGAN-PyTorch keeps 5 (num_best_copies)."))
    lease_timeout_s: float = Field(120.0, gt=0, description=(
        "A run dir's lease (one writer per run dir) without a heartbeat for this long is stale and taken over; "
        "the holder refreshes it every lease_timeout_s / 4."))




class ExperimentConfig(Section):
    """A whole experiment."""

    name: str = Field("gandist", description="Run name (labels metrics and jobs).")
    seed: int = Field(0, ge=0, description="Seed of every random stream.")
    model: ModelConfig = Field(default_factory=MLPConfig, description="Architecture (model.arch selects).")
    loss: LossConfig = Field(default_factory=LossConfig, description="Adversarial loss.")
    penalties: list[PenaltyConfig] = Field(default_factory=list, description="Regularizers (each with weight and every).")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="D input augmentations and packing.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizers.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training run.")
    data: DataConfig = Field(default_factory=Toy2DConfig, description="Data source (data.kind selects).")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="Distribution.")
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig, description="Stability watchdog.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Checkpoints.")
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig, description="Metrics and samples.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")

    @model_validator(mode="before")
    @classmethod
    def _default_tags(cls, data: Any) -> Any:
        """`model: {hidden: 32}` means the default arch (mlp), `data: {mixture: grid25}` the default kind."""
        if isinstance(data, dict):
            for section, tag, default in (("model", "arch", "mlp"), ("data", "kind", "toy2d")):
                if isinstance(data.get(section), dict) and tag not in data[section]:
                    data = {**data, section: {tag: default, **data[section]}}
        return data

    @model_validator(mode="after")
    def _sections_fit(self) -> "ExperimentConfig":
        """What one section asks of another (gandist/config_checks.py, in order; the first failure is reported)."""
        config_checks.check_all(self)
        return self

    def to_yaml(self) -> str:
        """The resolved config as YAML (every default spelt out)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def hash(self) -> str:
        """A short hash of the resolved config; changes to run-only keys (steps, telemetry) do not change it."""
        data = self.model_dump(mode="json")
        for key in ("train.steps", "telemetry", "eval", "checkpoint", "watchdog", "distributed"):
            head, _, tail = key.partition(".")
            if tail:
                data[head].pop(tail, None)
            else:
                data.pop(head, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Loading, overrides and error messages


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], typed c). Values are parsed as YAML: 3 -> int, 1e-4 -> float, [1,2] -> list."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.batch_size=64")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and NUMBER.fullmatch(value.strip()):  # YAML 1.1 reads 1e-4 as a string
        value = float(value)
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw.strip()  # YAML 1.1 reads off/on/yes/no as booleans: train.amp=off means the string "off"
    return key.strip().split("."), value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    """Set data[path] = value; list items are addressed by index (penalties.0.weight)."""
    node: Any = data
    for i, part in enumerate(path[:-1]):
        nxt = node[int(part)] if isinstance(node, list) else node.get(part)
        if nxt is None or not isinstance(nxt, (dict, list)):
            nxt = {}
            if isinstance(node, list):
                raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[:i + 1])} does not exist")
            node[part] = nxt
        node = nxt
    last = path[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise ConfigError(f"--set {'.'.join(path)}: no item {last} in a list of {len(node)}") from None
    else:
        node[last] = value


def _allowed_keys(model_cls: Any, loc: tuple) -> list[str]:
    """The field names at a location of the config, for 'did you mean' hints."""
    cls = ExperimentConfig
    for part in loc[:-1]:
        if isinstance(part, int) or cls is None:
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            # a tag of a discriminated union, e.g. ('model', 'biggan', 'ch')
            cls = _union_member(part) or cls
            continue
        cls = _section_class(field.annotation)
    return sorted(getattr(cls, "model_fields", {}))


def _section_class(annotation: Any) -> Any:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    for arg in get_args(annotation):
        found = _section_class(arg)
        if found is not None:
            return found
    return None


def _union_member(tag: str) -> Any:
    from typing import get_args

    for union in (ModelConfig, DataConfig, PenaltyConfig):
        for member in get_args(get_args(union)[0]):
            for field_name in ("arch", "kind"):
                field = member.model_fields.get(field_name)
                if field is not None and tag in get_args(field.annotation):
                    return member
    return None


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One line per problem: `dotted.path: what is wrong (what is allowed)`."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"])
        # drop union tags from the dotted path shown to the user (model.biggan.ch -> model.ch)
        shown = [str(p) for p in loc if not (isinstance(p, str) and _union_member(p) and p not in ("model", "data"))]
        path = ".".join(shown) or "(root)"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(ExperimentConfig, loc)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean {close[0]}?" if close else f"allowed: {', '.join(allowed)}"
            lines.append(f"{path}: unknown key ({hint})")
        elif e["type"] == "union_tag_invalid":
            lines.append(f"{path}: {e['msg']}")
        elif e["type"] == "value_error" and not shown:
            # a check across sections: its message names the keys itself
            lines.append(e["msg"].removeprefix("Value error, "))
        else:
            value = e.get("input")
            shown_value = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
            lines.append(f"{path}: {e['msg']}{shown_value}")
    return f"{source}: " + "; ".join(lines) if len(lines) == 1 else f"{source}:\n  " + "\n  ".join(lines)


def config_from_dict(data: dict, source: str = "config") -> ExperimentConfig:
    """Validate a plain dict; raises ConfigError with readable lines."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def yaml_error_line(path: Path, err: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: file:line:column (1-based, as editors count) and what the parser expected."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{where}: not valid YAML: {problem} (fix the syntax there; --set values are YAML too)"


def load_config(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    """Load a YAML config (or defaults when path is None) and apply `a.b=c` overrides."""
    data: dict = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found (give a YAML file, e.g. configs/demo_digits.yaml)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(yaml_error_line(path, err)) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    return config_from_dict(data, source)
