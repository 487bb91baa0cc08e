"""The one exception family every layer raises.

    FerryError                  anything Ferry itself decides is wrong
    ├── InvalidInput            the request is malformed or does not fit the model   (permanent)
    ├── ModelNotFound           no such model, or no such version                    (permanent)
    ├── Unsupported             a protocol feature Ferry does not implement          (permanent)
    ├── Unavailable             try again later                                      (retryable)
    │   ├── QueueFull           the model's queue holds as many requests or bytes as it may
    │   ├── QueueTimeout        the request waited in the queue past its policy's timeout
    │   ├── ModelNotReady       the model exists but is not serving
    │   └── ShuttingDown        the server is draining
    ├── DeadlineExceeded        the caller's deadline passed before the answer was ready
    ├── EngineError             the backend failed while running a batch
    │   └── CudaError           a CUDA call failed; the message names the call and the error
    └── ModelLoadError          a model could not be loaded (reported, never raised to a caller)

The server maps these to gRPC status codes in exactly one place (server/errors.py). Library
exceptions (ONNX Runtime, CUDA, TensorRT) are translated into this family where they are caught,
at the engine boundary, with `raise ... from exc`.
"""

from __future__ import annotations


class FerryError(Exception):
    """Base of every error Ferry raises on purpose; its message is safe to show a caller."""


class InvalidInput(FerryError):
    """The request cannot be served as sent; sending it again will not help."""


class ModelNotFound(FerryError):
    """The named model or model version is not in the repository."""


class AlreadyExists(FerryError):
    """The name is taken (a shared-memory region registered twice)."""


class LimitExceeded(FerryError):
    """A server-side bound on what a caller may hold (regions, mapped bytes) would be passed."""


class Unsupported(FerryError):
    """The request asks for a feature Ferry does not implement."""


class Unavailable(FerryError):
    """The server cannot take the request now; a retry later may succeed."""


class QueueFull(Unavailable):
    """The model's queue is at its bound; refused at once instead of waiting."""


class Overloaded(Unavailable):
    """Refused at arrival: predicted to miss the model's latency budget or its own deadline
    (scheduler/slo.py). Retryable, and it cost no compute. `reason`: "budget" or "deadline"."""

    def __init__(self, message: str, reason: str = "budget") -> None:
        super().__init__(message)
        self.reason = reason


class QueueTimeout(Unavailable):
    """The request's queue policy timeout passed before it could start (action REJECT)."""


class ModelNotReady(Unavailable):
    """The model is known but not ready (loading failed, or it is unloading)."""


class ShuttingDown(Unavailable):
    """The server is draining and accepts no new work."""


class DeadlineExceeded(FerryError):
    """The caller's deadline passed before the request could be computed."""


class EngineError(FerryError):
    """The backend failed while executing a batch; every member of the batch gets it."""


class CudaError(EngineError):
    """A CUDA call failed: the message names the call and the CUDA error (name and text)."""


class ModelLoadError(FerryError):
    """A model could not be loaded; the message names the file and the problem."""


SHOWN_CHARS = 64
"""How much of a caller's own string (a model name, a tensor name) an error message repeats."""


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` cut to `limit` characters, saying how long it was: errors travel in gRPC trailers,
    which clients refuse beyond a few kilobytes, and a caller's string may be any length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class BuildError(FerryError):
    """`ferry build` refused: the options, the source model, the calibration data or the
    accuracy gate. The message says which and why; nothing was written."""
