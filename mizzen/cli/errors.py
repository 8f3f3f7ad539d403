"""CLI errors: each becomes readable text on stderr after "mizzen: " and exit code 1."""


class UsageError(Exception):
    """Bad flags or arguments."""


class CommandError(Exception):
    """The command failed (not found, invalid, store unreachable, ...); the text says why."""
