"""Ferry: an asynchronous, dynamic-batching inference server speaking Triton's protocols.

Everything Ferry ships imports under this one name. The subpackages are the top-level folders of
the source tree (server/, scheduler/, engines/, ...), linked here so that the tree keeps the
layout a newcomer reads while an install puts only `ferry` into site-packages. Who may import
whom, and one request's way through the files: docs/architecture.md.
"""

from __future__ import annotations

from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("ferry")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _version()
__all__ = ["__version__"]
