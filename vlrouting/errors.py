"""One exception type for every user-facing error.

Command-line entry points catch :class:`VLRoutingError` and print its message as one sentence on stderr with a
non-zero exit status, instead of a traceback wall. Raise it (or a subclass) for bad paths, missing ids, unknown
names and malformed files; the message must name the thing and say what to do.
"""


class VLRoutingError(Exception):
    """A user-facing error whose message is one clear sentence."""


class ConfigError(VLRoutingError, ValueError):
    """An unknown option, routing, task or mix, or a malformed config file."""


class DataError(VLRoutingError):
    """A missing or malformed dataset file, annotation or feature."""


class MissingFeatureError(DataError, KeyError):
    """An image id that the feature files do not contain."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
