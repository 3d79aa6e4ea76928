"""`gandist` command line. Core commands live here; each subsystem adds its own in `<package>/cli.py::add_cli`."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from gandist.errors import UserError, WatchdogGaveUp

# Subsystems that add subcommands (each module's add_cli(subparsers) must import nothing heavy at module level).
SUBSYSTEM_CLIS = (
    "gandist.models.cli",  # info
    "gandist.data.cli",  # data shards
    "gandist.eval.cli",  # eval, features
    "gandist.telemetry.cli",  # dashboard
    "gandist.orchestrate.cli",  # submit, jobs
)

# Two-word commands whose first word is also a command with a positional (`gandist eval RUN_DIR`): routed to their
# own parser, so `gandist eval stats --help` shows the stats options
NESTED_COMMANDS = {("eval", "stats"): "eval-stats"}

EXIT_USER_ERROR = UserError.exit_code  # 2
EXIT_WATCHDOG_GAVE_UP = WatchdogGaveUp.exit_code  # 3


def build_parser() -> argparse.ArgumentParser:
    from gandist import commands

    parser = argparse.ArgumentParser(prog="gandist", description="Train GANs across many GPUs, stably.")
    sub = parser.add_subparsers(dest="command", required=True)
    commands.add_core_commands(sub)
    for name in SUBSYSTEM_CLIS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # subsystem not present in this build
                continue
            raise
        module.add_cli(sub)
    return parser


def route_nested(argv: list[str]) -> list[str]:
    """`eval stats ...` -> `eval-stats ...` (NESTED_COMMANDS); a run dir named `stats` still evaluates."""
    argv = list(argv)
    name = NESTED_COMMANDS.get(tuple(argv[:2]))
    if name and not os.path.isfile(os.path.join(argv[1], "config.yaml")):
        return [name, *argv[2:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(route_nested(sys.argv[1:] if argv is None else argv))
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C / SIGINT saves a checkpoint (train) or stops --watch: a process started in the background of a
        # non-interactive shell (`gandist train ... &`, nohup, some CI runners) inherits SIGINT ignored, and Python
        # then never raises KeyboardInterrupt; give it back its default meaning
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = int(args.func(args) or 0)
    except WatchdogGaveUp as err:  # a UserError too, but its report spans lines
        print(f"gandist: the watchdog stopped training:\n{err.report}", file=sys.stderr)
        code = err.exit_code
    except UserError as err:  # ConfigError, CheckpointError, DataStreamError, ...
        print(f"gandist: error: {err}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        print("gandist: interrupted", file=sys.stderr)
        code = 130
    if argv is None and getattr(args, "command", None) == "train" and "TORCHELASTIC_RUN_ID" in os.environ:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """End a torchrun worker without interpreter finalization.

    Everything is written and closed by now (checkpoints, logs, the process group). What remains is C++ static
    destruction, where a gloo worker thread still joinable made about 1 in 20 ranks abort ("terminate called
    without an active exception", exit -6) after a successful run, which torchrun reports as a failed job.
    """
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
