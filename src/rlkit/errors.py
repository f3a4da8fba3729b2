"""The one exception type for mistakes a user can make and fix.

Anything that a user can cause (a bad key, a missing file, a missing column, an unknown recipe,
no GPU for a GPU profile, a corrupt checkpoint) raises :class:`UserError`. The CLI turns it into
one red line with the hint, exit code 2 and no traceback (unless ``--debug``). Everything else is
a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: ``message`` says what is wrong, ``hint`` how to fix it.

    Example:
        >>> raise UserError("data.train_files: no such file 'x.parquet'", hint="run `rlkit data gsm8k` first")
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
