"""Errors a user can cause. The CLI prints their message as one sentence and exits non-zero;
the server turns them into 4xx JSON. Anything else is a bug and keeps its traceback."""


class FmnistError(Exception):
    """Base class: the message says what happened and how to fix it. Under torchrun, `rank`
    is the process that raised it (the message names it too)."""

    rank: int | None = None
    # the CLI's exit status for it (fmnist.cli.EXIT_CODES says what each means)
    exit_code: int = 2


class DatasetError(FmnistError):
    """Dataset files missing, corrupt, or not what their spec says."""


class CheckpointError(FmnistError):
    """A checkpoint that is missing, unreadable, or for another architecture."""


class ImageError(FmnistError):
    """An input that is not a decodable image, or one too large to accept."""


class ConfigError(FmnistError):
    """An unknown recipe/model/dataset name or a bad option value."""


class DivergedError(FmnistError):
    """Training stopped learning: a non-finite loss, or one far above chance."""

    exit_code = 3  # its own status: a script can retry with a lower lr, not fix its flags


class WriteError(FmnistError):
    """A file could not be written: disk full, read-only, failing, or no permission."""
