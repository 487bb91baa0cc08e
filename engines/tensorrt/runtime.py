"""Finding TensorRT and speaking to it: the module, a logger that keeps errors, data types.

Ferry runs with the full `tensorrt` package (NVIDIA's container image) or with the lean runtime
`tensorrt_lean` (a pip wheel: deserialize and execute only), whichever imports first; both have
the same runtime API. Nothing here may run without a GPU: a TensorRT Runtime created without one
crashes the process on first use, so the repository asks for the GPUs first.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

from ferry.common.datatypes import DATATYPES, DataType
from ferry.common.errors import ModelLoadError

log = logging.getLogger("ferry.engines.tensorrt")

MODULES = ("tensorrt", "tensorrt_lean")

# TensorRT's DataType member names → protocol types. FP8, INT4, FP4 and E8M0 have no protocol
# type: a plan whose I/O uses them is refused at load.
_DATATYPES = {
    "FLOAT": "FP32",
    "HALF": "FP16",
    "BF16": "BF16",
    "INT8": "INT8",
    "UINT8": "UINT8",
    "INT32": "INT32",
    "INT64": "INT64",
    "BOOL": "BOOL",
}


def import_tensorrt() -> Any:
    """The TensorRT module (full, else lean); ModelLoadError saying what was tried."""
    problems = []
    for name in MODULES:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
    raise ModelLoadError("TensorRT is not installed (" + "; ".join(problems) + ")")


def member_name(value: Any) -> str:
    """The name of a TensorRT enum member (`DataType.FLOAT` → `FLOAT`)."""
    name = getattr(value, "name", None)
    return str(name) if name is not None else str(value).rsplit(".", 1)[-1]


def datatype(trt_type: Any, tensor: str, where: str) -> DataType:
    name = member_name(trt_type)
    if name not in _DATATYPES:
        raise ModelLoadError(
            f"{where}: tensor '{tensor}' has TensorRT type {name}, which the protocol cannot carry"
        )
    return DATATYPES[_DATATYPES[name]]


class ErrorLog:
    """TensorRT's logger for Ferry: warnings and errors go to Ferry's log, and errors are kept
    so a failed call (deserialize returns None, set_input_shape returns False) can say why.

    TensorRT keeps the first logger a process gives it and ignores later ones (it says so in a
    warning), so there is one ErrorLog per TensorRT module: `ErrorLog.of(trt)`.
    """

    _by_module: dict[int, ErrorLog] = {}
    _made = threading.Lock()

    @classmethod
    def of(cls, trt: Any) -> ErrorLog:
        with cls._made:
            found = cls._by_module.get(id(trt))
            if found is None or found._trt is not trt:
                found = cls._by_module[id(trt)] = cls(trt)
            return found

    def __init__(self, trt: Any) -> None:
        self._trt = trt
        self._lock = threading.Lock()
        self._errors: list[str] = []
        severity = trt.ILogger.Severity
        self._error_levels = {int(severity.INTERNAL_ERROR), int(severity.ERROR)}
        self._warning = int(severity.WARNING)
        error_log = self

        class _Logger(trt.ILogger):  # type: ignore[misc]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, level: Any, message: str) -> None:
                error_log.record(int(level), message)

        self.logger = _Logger()

    def record(self, level: int, message: str) -> None:
        if level in self._error_levels:
            with self._lock:
                self._errors.append(message)
            log.error("TensorRT: %s", message)
        elif level == self._warning:
            log.warning("TensorRT: %s", message)
        else:
            log.debug("TensorRT: %s", message)

    def take(self) -> str:
        """The errors logged since the last take, joined; "" when none."""
        with self._lock:
            errors, self._errors = self._errors, []
        return "; ".join(errors)
