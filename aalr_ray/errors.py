"""The one-line error text that every command-line error of aalr-ray is made of.

Standard library only, so every layer (the grid schema and the report included)
can use it without pulling in Ray or torch.
"""
from __future__ import annotations

MAX_CHARS = 400


def one_line(message: object, limit: int | None = MAX_CHARS) -> str:
    """``message`` (text or an exception) as one line of at most ``limit`` characters (None: any length).

    Newlines and runs of spaces become one space, because the CLI prints
    ``error: <text>`` and a wrapped library message must not spill over
    several lines. An exception without text is named by its type.

    >>> one_line(ValueError("bad\\n   value"))
    'bad value'
    >>> one_line(KeyError())
    'KeyError'
    """
    text = " ".join(str(message).split())
    if limit is not None and len(text) > limit:
        text = text[:limit - 3] + "..."
    if not text and isinstance(message, BaseException):
        return type(message).__name__
    return text


def describe(exc: BaseException, limit: int = 200) -> str:
    """``TypeName: first line of the message``: how a caught exception is quoted inside another error.

    >>> describe(ModuleNotFoundError("No module named 'x'\\nmore"))
    "ModuleNotFoundError: No module named 'x'"
    """
    first = (str(exc).strip().splitlines() or [""])[0]
    text = one_line(first, limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
