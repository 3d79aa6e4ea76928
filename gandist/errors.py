"""Exceptions that carry a message meant for the user."""


class UserError(Exception):
    """A problem with the user's input (config, path, URL, checkpoint): printed as one line, exit code 2."""


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, from another model, or fails its checksum."""
