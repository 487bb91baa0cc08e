"""The floor for the HTTP front end's stack: aiohttp on uvloop whose infer handler only echoes
the binary input back under a fixed JSON header. No validation, no queue, no model.
bench/http_echo.py compares Ferry's HTTP `echo` against it."""

from __future__ import annotations

import argparse
import asyncio
import json

import uvloop
from aiohttp import web

HEADER_LENGTH = "Inference-Header-Content-Length"


async def infer(request: web.Request) -> web.Response:
    body = await request.read()
    data = body[int(request.headers[HEADER_LENGTH]) :]
    output = {
        "name": "y",
        "datatype": "FP32",
        "shape": [1, len(data) // 4],
        "parameters": {"binary_data_size": len(data)},
    }
    document = {"model_name": request.match_info["model"], "model_version": "1"}
    header = json.dumps({**document, "outputs": [output]}).encode()
    answer = web.Response(body=header + data, content_type="application/octet-stream")
    answer.headers[HEADER_LENGTH] = str(len(header))
    return answer


async def serve(port: int) -> None:
    app = web.Application()
    app.add_routes([web.post("/v2/models/{model}/infer", infer)])
    runner = web.AppRunner(app, handle_signals=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"serving on 127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()  # until the process is stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
