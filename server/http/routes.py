"""The KServe v2 REST paths, as Triton serves them, and their handlers.

Every handler raises Ferry's errors; `_errors` (one middleware) writes them as
`{"error": message}` with the status server/http/status.py gives, unknown paths and wrong
methods included. Inference goes through the same admission, memory budget, inference path
(server/inference.py) and observer as gRPC's; answers about the server come from
server/answers.py.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ferry.common.errors import (
    InvalidInput,
    ModelNotFound,
    QueueFull,
    Unsupported,
    shown,
)
from ferry.server import answers
from ferry.server.admission import Admission
from ferry.server.errors import log_if_unexpected
from ferry.server.http.json_form import to_json
from ferry.server.http.status import to_http
from ferry.server.http.tensors import HEADER_LENGTH, parse_infer, render_infer
from ferry.server.inference import Inference
from ferry.server.live_settings import LogSettings, TraceSettings
from ferry.server.memory import MemoryBudget
from ferry.server.model_control import LoadRequest, ModelControl
from ferry.server.readiness import ReadinessState
from ferry.server.repository import ModelRepository

log = logging.getLogger("ferry.server")

TRACE_HEADERS = ("traceparent", "tracestate")
"""W3C trace context: what the observer reads to join the caller's trace, as from gRPC
metadata."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class HttpContext:
    """What the handlers share with the gRPC front end: one of each per server."""

    repository: ModelRepository
    readiness: ReadinessState
    inference: Inference
    admission: Admission
    budget: MemoryBudget
    control: ModelControl
    trace_settings: TraceSettings
    log_settings: LogSettings


def build_app(context: HttpContext, max_body_bytes: int) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=max_body_bytes)
    routes = _Routes(context)
    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    app.add_routes(
        [
            web.get("/v2/health/live", routes.live),
            web.get("/v2/health/ready", routes.ready),
            web.get("/v2", routes.server_metadata),
            web.get("/v2/models/stats", routes.statistics),
            web.post("/v2/repository/index", routes.repository_index),
            *(
                route
                for base in (model, versioned)
                for route in (
                    web.get(base, routes.model_metadata),
                    web.get(f"{base}/ready", routes.model_ready),
                    web.get(f"{base}/config", routes.model_config),
                    web.get(f"{base}/stats", routes.statistics),
                    web.post(f"{base}/infer", routes.infer),
                )
            ),
            web.post("/v2/repository/models/{model}/load", routes.load_model),
            web.post("/v2/repository/models/{model}/unload", routes.unload_model),
            web.get("/v2/systemsharedmemory/status", routes.shm_status),
            web.get("/v2/systemsharedmemory/region/{region}/status", routes.shm_status),
            web.post("/v2/systemsharedmemory/region/{region}/register", routes.shm_register),
            web.post("/v2/systemsharedmemory/unregister", routes.shm_unregister),
            web.post("/v2/systemsharedmemory/region/{region}/unregister", routes.shm_unregister),
            web.get("/v2/cudasharedmemory/status", routes.cuda_status),
            web.get("/v2/cudasharedmemory/region/{region}/status", routes.cuda_status),
            web.post("/v2/cudasharedmemory/unregister", routes.cuda_unregister),
            web.post("/v2/cudasharedmemory/region/{region}/unregister", routes.cuda_unregister),
            web.post(
                "/v2/cudasharedmemory/region/{region}/register",
                _unsupported("CUDA shared memory"),
            ),
            web.get("/v2/trace/setting", routes.trace_setting),
            web.post("/v2/trace/setting", routes.trace_setting),
            web.get("/v2/models/{model}/trace/setting", routes.trace_setting),
            web.post("/v2/models/{model}/trace/setting", routes.trace_setting),
            web.get("/v2/logging", routes.log_settings),
            web.post("/v2/logging", routes.log_settings),
        ]
    )
    return app


def _json(document: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(document, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def _unsupported(what: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise Unsupported(f"{what} is not implemented by Ferry yet")

    return handler


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        plain = {404: f"no such path: {shown(request.path)}", 405: "method not allowed"}
        text = plain.get(exc.status, exc.reason)
        if exc.status == 413:
            text = f"the request body exceeds the largest message the server takes: {exc.text}"
        return _json({"error": text}, exc.status)
    except Exception as exc:  # every error a handler raises becomes one JSON answer
        log_if_unexpected(exc)
        status, message = to_http(exc)
        return _json({"error": message}, status)


class _Routes:
    def __init__(self, context: HttpContext) -> None:
        self._c = context

    # ---- health and metadata -------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200 if self._c.readiness.ready else 400)

    async def model_ready(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        ready = answers.model_ready(self._c.repository, self._c.readiness, name, version)
        return web.Response(status=200 if ready else 400)

    async def server_metadata(self, request: web.Request) -> web.StreamResponse:
        return _json(to_json(answers.server_metadata()))

    async def model_metadata(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        return _json(to_json(answers.model_metadata(self._c.repository, name, version)))

    async def model_config(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        config = answers.model_config(self._c.repository, name, version).config
        return _json(to_json(config))

    async def statistics(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        return _json(to_json(answers.model_statistics(self._c.repository, name, version)))

    async def repository_index(self, request: web.Request) -> web.StreamResponse:
        ready = (await _document(request)).get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput("the body is a JSON object whose 'ready' is true or false")
        index = answers.repository_index(self._c.repository, "", ready)
        return _json([to_json(model) for model in index.models])

    # ---- model control -------------------------------------------------------------------------

    async def load_model(self, request: web.Request) -> web.StreamResponse:
        """Body (optional): {"parameters": {"config": "<JSON>", "file:1/model.onnx": "<b64>"}}."""
        parameters = _object_of(await _document(request), "parameters")
        config = parameters.get("config")
        if config is not None and not isinstance(config, str):
            config = json.dumps(config)  # a config sent as an object rather than its text
        files: dict[str, bytes] = {}
        for key, value in parameters.items():
            if key.startswith("file:"):
                if not isinstance(value, str):
                    raise InvalidInput(f"parameter '{shown(key)}' must be base64 text")
                try:
                    files[key[len("file:") :]] = base64.b64decode(value, validate=True)
                except binascii.Error:
                    raise InvalidInput(f"parameter '{shown(key)}' is not valid base64") from None
        await self._c.control.load(request.match_info["model"], LoadRequest(config, files))
        return web.Response(status=200)

    async def unload_model(self, request: web.Request) -> web.StreamResponse:
        await self._c.control.unload(request.match_info["model"])
        return web.Response(status=200)

    # ---- live settings -------------------------------------------------------------------------

    async def trace_setting(self, request: web.Request) -> web.StreamResponse:
        """Body: {"trace_level": ["TIMESTAMPS"], "trace_rate": "100", ...}; null clears."""
        model = request.match_info.get("model", "")
        if model:
            self._c.repository.entry(model)  # an unknown model is 404
        changes: dict[str, list[str]] = {}
        if request.method == "POST":
            for key, value in (await _document(request)).items():
                if value is None:
                    changes[key] = []
                elif isinstance(value, str):
                    changes[key] = [value]
                elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                    changes[key] = list(value)
                else:
                    raise InvalidInput(f"trace setting '{shown(key)}': a string or strings")
        settings = self._c.trace_settings.update(model, changes)
        return _json({k: v[0] if k != "trace_level" else v for k, v in settings.items()})

    async def log_settings(self, request: web.Request) -> web.StreamResponse:
        """Body: {"log_info": true, "log_verbose_level": 1, ...}."""
        changes: dict[str, bool | int | str] = {}
        if request.method == "POST":
            for key, value in (await _document(request)).items():
                if not isinstance(value, bool | int | str):
                    raise InvalidInput(f"log setting '{shown(key)}': a boolean, number or string")
                changes[key] = value
        return _json(self._c.log_settings.update(changes))

    # ---- shared memory -------------------------------------------------------------------------

    async def shm_status(self, request: web.Request) -> web.StreamResponse:
        status = answers.system_shared_memory_status(
            self._c.inference.regions, request.match_info.get("region", "")
        )
        return _json([to_json(region) for _, region in sorted(status.regions.items())])

    async def shm_register(self, request: web.Request) -> web.StreamResponse:
        document = await _document(request)
        key = document.get("key")
        offset = document.get("offset", 0)
        size = document.get("byte_size")
        if not (isinstance(key, str) and _natural(offset) and isinstance(size, int)
                and _natural(size)):  # fmt: skip
            raise InvalidInput(
                "the body is a JSON object with 'key' (a string), 'offset' and 'byte_size' "
                "(integers >= 0)"
            )
        self._c.inference.regions.register(request.match_info["region"], key, offset, size)
        return web.Response(status=200)

    async def shm_unregister(self, request: web.Request) -> web.StreamResponse:
        self._c.inference.regions.unregister(request.match_info.get("region", ""))
        return web.Response(status=200)

    async def cuda_status(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("region", "")
        if name:
            raise InvalidInput(f"Unable to find cuda shared memory region: '{shown(name)}'")
        return _json([])  # none can be registered

    async def cuda_unregister(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)  # nothing registered: nothing to do

    # ---- inference -----------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.StreamResponse:
        context = self._c
        name, version = _model(request)
        length = request.content_length
        if length is not None and not context.budget.fits(MemoryBudget.cost(length, 0)):
            raise QueueFull(
                f"Exceeds the server's memory budget: a {length}-byte request does not fit what "
                "requests in flight leave of it"
            )
        context.repository.get(name, version)  # an unknown model is 404 whatever the body holds
        context.admission.enter()
        try:
            body = await request.read()
            parsed = parse_infer(body, request.headers.get(HEADER_LENGTH), name, version)
            metadata = [(k, request.headers[k]) for k in TRACE_HEADERS if k in request.headers]
            response = await context.inference.infer(
                parsed.request, None, metadata, "HTTP infer", parsed.raw
            )
        finally:
            context.admission.leave()
        out, header_length = render_infer(response, parsed)
        if header_length is None:
            answer = web.Response(body=out, content_type="application/json")
        else:
            answer = web.Response(body=out, content_type="application/octet-stream")
            answer.headers[HEADER_LENGTH] = str(header_length)
        if "Accept-Encoding" in request.headers:
            answer.enable_compression()  # gzip or deflate, as the client accepts
        return answer


async def _document(request: web.Request) -> dict[str, Any]:
    body = await request.read()
    try:
        document = json.loads(body) if body.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object")
    return document


def _object_of(document: dict[str, Any], key: str) -> dict[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise InvalidInput(f"'{key}' must be a JSON object")
    return value


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _model(request: web.Request) -> tuple[str, str]:
    info = request.match_info
    name, version = info.get("model", ""), info.get("version", "")
    if version and not version.isdigit():
        raise ModelNotFound(f"model '{shown(name)}' has no version '{shown(version)}'")
    return name, version

