"""Every error segstream raises on purpose, under one root.

A caller that wants "anything segstream refused" catches ``SegstreamError``; the command
line does, and prints its message as one line. Each kind also derives from the built-in
exception it replaced (``ValueError`` for bad values, ``RuntimeError`` for things that
failed at run time), so code that caught those keeps working.

Every message says what was expected, what was found, and how to fix it.

    >>> from segstream.errors import ConfigError, SegstreamError
    >>> try:
    ...     raise ConfigError("opacity must be between 0 and 1, found 2.0")
    ... except SegstreamError as exc:
    ...     print(exc)
    opacity must be between 0 and 1, found 2.0
"""

from __future__ import annotations


class SegstreamError(Exception):
    """The root of every error segstream raises on purpose."""


class ConfigError(SegstreamError, ValueError):
    """A configuration value is wrong; the message names the setting and the fix."""


class SourceError(SegstreamError, RuntimeError):
    """A source cannot be opened or read; the message says what was expected."""


class ModelError(SegstreamError, ValueError):
    """A model, its metadata or its weights are unusable; the message says why."""


class BackendUnavailable(ModelError):
    """A backend was asked for that this machine cannot run; the message says how to fix it."""


class AssetError(SegstreamError, RuntimeError):
    """A data file (weights, sample clip) is missing or corrupt; the message says where to put it."""


class EndpointError(SegstreamError, RuntimeError):
    """A ZeroMQ endpoint cannot be bound or connected; the message names it."""


class MessageError(SegstreamError, ValueError):
    """A data-plane or control-plane message failed validation.

    Attributes:
        reason: a short counter key (``bad_json``, ``bad_field``...), counted per stage.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class MaskCodecError(SegstreamError, ValueError):
    """An encoded mask does not decode to its declared shape."""


class PipelineFailed(SegstreamError, RuntimeError):
    """A stage died or could not start; the message names it and says why."""


class OutputError(SegstreamError, RuntimeError):
    """An output (a sink) cannot be opened or written; the message names it."""


class EvalError(SegstreamError, ValueError):
    """Predictions and ground truth cannot be compared; the message says what is missing."""


class ReportError(SegstreamError, ValueError):
    """A run folder cannot be turned into a report; the message says what is missing."""
