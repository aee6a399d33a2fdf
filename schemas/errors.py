"""Error types shared by every package.

A ``UserError`` is a problem with the user's input (a file, a record, an option): the CLI prints its
message on one line and exits with status 2, without a traceback. A job that published its output
but dead-lettered input records exits with status 3 (``DeadLettered``). Anything else is a bug.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the message names the file, record or option at fault."""

    exit_status = 2


class DeadLettered(UserError):
    """A job published its output but dead-lettered more of its input than allowed."""

    exit_status = 3


class ConfigError(UserError):
    """An invalid configuration value, unknown key or unknown preset."""


class RecordError(UserError):
    """A record that cannot be read or does not match its spec.

    ``path`` and ``index`` (record number in the file, from 0) and ``offset`` (byte offset of the
    record's frame in the uncompressed stream) are kept as attributes so that dead-letter outputs can
    report them.
    """

    def __init__(self, reason: str, path: str | None = None, index: int | None = None,
                 offset: int | None = None):
        self.reason = reason
        self.path = path
        self.index = index
        self.offset = offset
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.index is not None:
            where.append(f"record {self.index}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason

    def located(self, path: str | None = None, index: int | None = None,
                offset: int | None = None) -> "RecordError":
        """The same error with the location filled in where it was not known yet."""
        return type(self)(self.reason,
                          self.path if self.path is not None else path,
                          self.index if self.index is not None else index,
                          self.offset if self.offset is not None else offset)


class StorageUnavailable(UserError):
    """A bucket that kept failing past the retry budget (``schemas.fs``): the command stops with
    one line and resumes when rerun."""
