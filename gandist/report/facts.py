"""The report's header: the config's key facts and the run's wall time, steps, images seen, rollbacks, best."""
from __future__ import annotations

from gandist.report.runlog import RunData, number
from gandist.telemetry.summary import _duration


def wall_seconds(run: RunData) -> float:
    """Training wall time summed over sessions (each start event to the last record or event before the next)."""
    stamps = sorted([(e.get("time", 0.0), e.get("event") == "start") for e in run.events] +
                    [(r.get("time", 0.0), False) for r in run.records])
    total, begin, last = 0.0, None, None
    for when, is_start in stamps:
        if is_start:
            if begin is not None and last is not None:
                total += last - begin
            begin, last = when, when
        elif begin is None:
            begin, last = when, when
        else:
            last = when
    if begin is not None and last is not None:
        total += last - begin
    return total


def _config_facts(cfg: dict) -> list[tuple[str, str]]:
    model, data, train = cfg.get("model") or {}, cfg.get("data") or {}, cfg.get("train") or {}
    optim, dist = cfg.get("optim") or {}, cfg.get("distributed") or {}
    data_words = data.get("kind", "?")
    for key in ("mixture", "resolution", "path", "url"):
        if data.get(key) not in (None, ""):
            data_words += f" {key}={data[key]}"
    penalties = ", ".join(f"{p.get('kind')} {p.get('weight', '')}".strip() for p in (cfg.get("penalties") or [])
                          if isinstance(p, dict))
    lr = lambda net: (optim.get(net) or {}).get("lr", "?")  # noqa: E731
    return [
        ("run", str(cfg.get("name", "?"))),
        ("model", f"{model.get('arch', '?')} (z_dim {model.get('z_dim', '?')})"),
        ("data", data_words),
        ("loss", str((cfg.get("loss") or {}).get("kind", "?"))),
        ("penalties", penalties or "none"),
        ("batch", f"{train.get('batch_size', '?')} (d_steps {optim.get('d_steps', 1)}, "
                  f"accumulation {optim.get('accumulation', 1)})"),
        ("lr G / D", f"{lr('g')} / {lr('d')}"),
        ("strategy", str(dist.get("strategy", "?"))),
    ]


def header_facts(run: RunData) -> list[tuple[str, str]]:
    """(label, value) rows of the header."""
    cfg = run.config
    last = run.timeline[-1] if run.timeline else run.records[-1]
    target = (cfg.get("train") or {}).get("steps")
    ended = bool(run.events) and run.events[-1].get("event") in ("end", "gave_up")
    state = {"end": "finished", "gave_up": "the watchdog gave up"}.get(run.events[-1].get("event")) if ended else \
        "running or interrupted"
    worlds = [e.get("world_size") for e in run.events_of("start") if e.get("world_size")]
    best = run.best_checkpoint or "none (no evaluation tagged one)"
    best_eval = [e for e in run.evals if run.best_checkpoint and run.best_checkpoint == f"step-{e.get('step', -1):08d}"]
    if best_eval:
        best += " (" + ", ".join(f"{k} {number(v):.4g}" for k, v in best_eval[-1].items()
                                 if k not in ("step", "time") and isinstance(v, (int, float)))[:120] + ")"
    rows = _config_facts(cfg) + [
        ("world size", ", ".join(str(w) for w in dict.fromkeys(worlds)) or "?"),
        ("steps", f"{last['step']:,}" + (f" of {int(target):,}" if target else "") + f" ({state})"),
        ("images seen", f"{int(number(last.get('images_seen', 0))):,}"),
        ("wall time", _duration(wall_seconds(run))),
        ("rollbacks", str(len(run.events_of("rollback")))),
        ("best checkpoint", best),
        ("records", f"{len(run.records):,} in metrics.jsonl ({len(run.abandoned):,} from rolled-back steps)"),
    ]
    return rows
