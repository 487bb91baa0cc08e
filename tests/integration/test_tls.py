"""TLS and mutual TLS on the gRPC and HTTP listeners: served with TLS, plaintext refused, a
client without the right certificate refused under mTLS, and a rotated certificate taken up
without a restart."""

from __future__ import annotations

import asyncio
import http.client
import os
import ssl
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from ferry.server import cli
from ferry.server.app import FerryServer
from ferry.server.config import ServerConfig
from ferry.server.tls import TlsConfig
from tests.certificates import Authority, Issued


async def live(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """ServerLive over a fresh connection: OK, or the status the connection ended with."""
    channel = (
        grpc.aio.insecure_channel(address)
        if credentials is None
        else grpc.aio.secure_channel(address, credentials)
    )
    try:
        await pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(
            pb.ServerLiveRequest(), timeout=5
        )
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close()


def https_live(port: int, ca: Authority | None, client: Issued | None, folder: Path) -> str:
    """GET /v2/health/live over a fresh connection: "200", or what refused it."""
    if ca is None:
        url, context = f"http://127.0.0.1:{port}/v2/health/live", None
    else:
        url = f"https://127.0.0.1:{port}/v2/health/live"
        context = ssl.create_default_context(cadata=ca.pem.decode())
        if client is not None:
            cert, key = client.write(folder, f"client-{os.urandom(4).hex()}")
            context.load_cert_chain(cert, key)
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return str(response.status)
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__


def trusting(ca: Authority, client: Issued | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.pem)
    return grpc.ssl_channel_credentials(ca.pem, client.key_pem, client.cert_pem)


@pytest_asyncio.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[FerryServer, Authority, Path]]:
    repo = tmp_path / "repo"
    repo.mkdir()
    ca = Authority("test CA")
    cert, key = ca.issue("ferry").write(tmp_path / "tls", "server")
    client_ca = tmp_path / "tls" / "clients.crt"
    client_ca.write_bytes(ca.pem)
    config = ServerConfig(
        repo, grpc_port=0, http_port=0, metrics_port=-1, tls=TlsConfig(cert, key, client_ca)
    )
    server = FerryServer(config)
    await server.start()
    try:
        yield server, ca, tmp_path / "tls"
    finally:
        await server.stop(0)


@pytest.mark.asyncio
async def test_mutual_tls_admits_only_clients_the_ca_signed(
    tls_server: tuple[FerryServer, Authority, Path],
) -> None:
    server, ca, _ = tls_server
    address = f"127.0.0.1:{server.tcp_port}"
    assert await live(address, trusting(ca, ca.issue("client", client=True))) == grpc.StatusCode.OK
    assert await live(address, None) == grpc.StatusCode.UNAVAILABLE  # plaintext
    assert await live(address, trusting(ca)) == grpc.StatusCode.UNAVAILABLE  # no certificate
    stranger = Authority("another CA").issue("client", client=True)
    assert await live(address, trusting(ca, stranger)) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.asyncio
async def test_https_under_mutual_tls_admits_only_clients_the_ca_signed(
    tls_server: tuple[FerryServer, Authority, Path], tmp_path: Path
) -> None:
    server, ca, _ = tls_server
    port = server.http_port
    assert port is not None

    def ask(ca_: Authority | None, client: Issued | None) -> Any:
        return asyncio.to_thread(https_live, port, ca_, client, tmp_path)

    assert await ask(ca, ca.issue("client", client=True)) == "200"
    assert await ask(None, None) != "200"  # plaintext
    assert await ask(ca, None) != "200"  # no client certificate
    stranger = Authority("another CA").issue("client", client=True)
    assert await ask(ca, stranger) != "200"


@pytest.mark.asyncio
async def test_a_rotated_certificate_is_used_without_a_restart(
    tls_server: tuple[FerryServer, Authority, Path],
) -> None:
    server, ca, folder = tls_server
    address = f"127.0.0.1:{server.tcp_port}"
    client = ca.issue("client", client=True)
    assert await live(address, trusting(ca, client)) == grpc.StatusCode.OK
    rotated = Authority("rotated CA")
    assert await live(address, trusting(rotated, client)) == grpc.StatusCode.UNAVAILABLE
    issued = rotated.issue("ferry")
    files = {folder / "server.key": issued.key_pem, folder / "server.crt": issued.cert_pem}
    for path, data in files.items():
        path.write_bytes(data)
        os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)  # a change even within a tick
    await asyncio.sleep(0)
    assert await live(address, trusting(rotated, client)) == grpc.StatusCode.OK
    assert await live(address, trusting(ca, client)) == grpc.StatusCode.UNAVAILABLE
    # The HTTP listener takes the rotated certificate too.
    port = server.http_port
    assert port is not None
    folder_ = folder.parent
    assert await asyncio.to_thread(https_live, port, rotated, client, folder_) == "200"
    assert await asyncio.to_thread(https_live, port, ca, client, folder_) != "200"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "a.crt"], "TLS needs both --tls-cert and --tls-key"),
        (["--tls-client-ca", "ca.crt"], "--tls-client-ca needs --tls-cert and --tls-key"),
    ],
)
def test_incomplete_tls_flags_are_refused(
    tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--model-repository", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err
