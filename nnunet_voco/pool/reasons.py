"""How the unlabelled pool words a failure: one-line exception text for skip lists, and the resume advice."""
from __future__ import annotations

RESUME_ADVICE = "finished cases are kept; free space there (or make it writable) and run the same command again"


def one_line(error: BaseException) -> str:
    """``"TypeName: message"`` on one line, at most 300 characters (for skip reasons and error messages)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]
