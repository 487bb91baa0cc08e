"""gRPC front end: codec, model repository, services, CLI and process lifecycle.

The public names load on first use, so that light modules (the example models, the codec) can be
imported where the gRPC service libraries are not installed (the GPU machine's test runs).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FerryServer", "ServerConfig", "serve"]
_WHERE = {
    "FerryServer": "ferry.server.app",
    "serve": "ferry.server.app",
    "ServerConfig": "ferry.server.config",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'ferry.server' has no attribute {name!r}")
