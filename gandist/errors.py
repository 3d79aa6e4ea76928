"""Every exception gandist raises for the user, in one place.

Each derives from UserError, so the command line prints one line and exits with the class's `exit_code`
(`gandist.cli.main` maps them; no other module decides an exit code). Library modules import from here, never
from gandist.cli.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (config, path, URL, checkpoint): printed as one line, exit code 2."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A user error in a config: the message names the dotted key, the bad value and what is allowed."""


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, from another model, or fails its checksum."""


class DataStreamError(UserError):
    """The stream cannot go on: too many skipped samples, a sample without the configured key, a bad label."""


class WatchdogGaveUp(UserError):
    """The watchdog stopped training (too many rollbacks, or none possible); `report` says why. Exit code 3."""

    exit_code = 3

    def __init__(self, report: str) -> None:
        super().__init__(report)
        self.report = report


class Preempted(UserError):
    """SIGTERM stopped training after the group saved a checkpoint (gandist/train/preempt.py). Exit code 143."""

    exit_code = 143
