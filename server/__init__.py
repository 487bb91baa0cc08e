"""gRPC front end: codec, model repository, services, CLI and process lifecycle."""

from server.app import FerryServer, serve
from server.config import ServerConfig

__all__ = ["FerryServer", "ServerConfig", "serve"]
