"""One exception type for every user-facing failure.

The CLI turns an :class:`EmbrecipeError` into a single line ``embrecipe: error: <message>`` and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any


class EmbrecipeError(Exception):
    """A problem with the user's input (file, column, model, budget, config), stated in one line."""


class InputError(EmbrecipeError):
    """Malformed data or config. The message names the file and line where known."""


class BudgetError(EmbrecipeError):
    """A FLOP budget that cannot be spent as asked (e.g. less than one optimizer step)."""


class TrainingDiverged(EmbrecipeError):
    """The loss became non-finite (or ran away) during training; the run is recorded as failed, no model exported.

    ``record`` holds the failed run's :class:`~embrecipe.runs.records.RunRecord` (``status "failed"``, ``failure``)
    when the trainer got that far.
    """

    def __init__(self, message: str, record: Any = None) -> None:
        super().__init__(message)
        self.record = record


class OutOfDiskSpace(EmbrecipeError):
    """Not enough free disk for the export or checkpoint (found before step 1, or ENOSPC while writing).

    A sweep stops on it instead of failing every remaining cell.
    """


class ClaimLost(EmbrecipeError):
    """The heartbeat that keeps a sweep's claims alive failed: another host could take them over while they train,
    so the cells were stopped and their claims handed back."""


class EmbrecipeWarning(UserWarning):
    """Input that is accepted but probably not what was meant (e.g. many duplicate pairs); the CLI prints it as
    one line ``embrecipe: warning: <message>``."""


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an exception it was raised from) means the disk is full: :class:`OutOfDiskSpace`,
    an ``OSError`` with ``ENOSPC``, or a library error that only says so in its text (safetensors raises
    ``SafetensorError: ... No space left on device (os error 28)``, which is no ``OSError``)."""
    import errno

    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OutOfDiskSpace) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
            return True
        text = str(exc)
        if "No space left on device" in text or "os error 28" in text:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def write_failure(exc: BaseException | None) -> str | None:
    """A one-line reason when ``exc`` (or an exception it was raised from) is a failed write to disk (an
    ``OSError``, or a library error that only says so in its text: safetensors' ``SafetensorError: ... (os error
    27)``, torch.save's ``RuntimeError: ... failed writing file``); None for anything else (a bug)."""
    import re

    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError):
            return exc.strerror or (str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        text = str(exc)
        if re.search(r"os error \d+|failed writing file|No space left on device|File too large", text):
            return text.strip().splitlines()[0]
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None
