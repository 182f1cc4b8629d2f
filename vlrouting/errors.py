"""One exception type for every user-facing error.

Command-line entry points catch :class:`VLRoutingError` and print its message as one sentence on stderr with a
non-zero exit status, instead of a traceback wall. Raise it (or a subclass) for bad paths, missing ids, unknown
names and malformed files; the message must name the thing and say what to do.

An error raised inside a torch DataLoader worker reaches the main process re-created by torch as
``type(msg)`` with ``msg = "Caught DataError in DataLoader worker process 0.\\nOriginal Traceback ...: <sentence>"``;
the constructor below recovers the one sentence from that text, so the user sees it and not the worker's traceback.
"""

from __future__ import annotations

_WORKER_PREFIX = "Caught "
_WORKER_MARK = "\nOriginal Traceback (most recent call last):"


def _sentence_from_worker(text: str, cls: type) -> str:
    """The original message of a DataLoader worker's exception text (``text`` unchanged when it is not one)."""
    if not (text.startswith(_WORKER_PREFIX) and _WORKER_MARK in text):
        return text
    # the traceback ends with "<module>.<qualname>: <message>" (traceback.format_exception); the last one is ours
    head = f"\n{cls.__module__}.{cls.__qualname__}: "
    at = text.rfind(head)
    if at >= 0:
        return text[at + len(head):].strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else text
    return last.split(": ", 1)[1].strip() if ": " in last else last.strip()


class VLRoutingError(Exception):
    """A user-facing error whose message is one clear sentence."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_sentence_from_worker(args[0], type(self)),)
        super().__init__(*args)


class ConfigError(VLRoutingError, ValueError):
    """An unknown option, routing, task or mix, or a malformed config file."""


class DataError(VLRoutingError):
    """A missing or malformed dataset file, annotation or feature."""


class MissingFeatureError(DataError, KeyError):
    """An image id that the feature files do not contain."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
