"""Notes on an exception: what was kept and how to continue, added where that is known.

The code that stops on an error often knows what it kept (a chain's finished iterations) while only the
top-level handler prints. `BaseException.add_note` (Python 3.11) carries such lines to it; on 3.10 the
same `__notes__` list is set by hand, so the handler reads one attribute on every version.
"""
from __future__ import annotations


def add_note(exc: BaseException, text: str) -> None:
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        notes.append(text)
    else:
        exc.__notes__ = [text]  # type: ignore[attr-defined]


def notes_of(exc: BaseException) -> list[str]:
    notes = getattr(exc, "__notes__", None)
    return [str(n) for n in notes] if isinstance(notes, list) else []
