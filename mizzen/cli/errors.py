"""CLI errors: each becomes one readable line on stderr and exit code 1."""


class UsageError(Exception):
    """Bad flags or arguments."""
