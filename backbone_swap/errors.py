"""The one exception type for mistakes a user can fix.

Anything raised that is not a ``BackboneSwapError`` is a bug in backbone-swap and keeps its traceback;
a ``BackboneSwapError`` is shown as one sentence plus what to do about it.
"""

from __future__ import annotations


class BackboneSwapError(Exception):
    """A problem with the user's input, with a hint on how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message.rstrip(".")
        self.hint = hint.strip()

    def __str__(self) -> str:
        text = f"{self.message}."
        if self.hint:
            text += f" {self.hint.rstrip('.')}."
        return text
