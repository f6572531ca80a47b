"""The gateway forwards to the node over a Unix socket: status, headers, cookies, bodies.

A real uvicorn on a Unix socket stands in for the node (an app of a few routes);
the forwarder is called through httpx's ASGI transport, as uvicorn would call it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from api.forwarding import NodeForwarder


async def cookies(request: Request) -> Response:
    response = JSONResponse({"client": request.headers.get("x-journeys-client")}, status_code=201)
    response.set_cookie("session", "s1", httponly=True)
    response.set_cookie("csrf", "c1")
    response.headers["x-node"] = "yes"
    return response


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(body[::-1], media_type="application/octet-stream", status_code=400)


async def stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for n in range(3):
            yield f"chunk{n};".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


NODE = Starlette(
    routes=[
        Route("/cookies", cookies),
        Route("/echo", echo, methods=["POST"]),
        Route("/stream", stream),
    ]
)


@pytest.fixture
def node_socket(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "node.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    server = uvicorn.Server(uvicorn.Config(NODE, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=lambda: server.run(sockets=[listener]), daemon=True)
    thread.start()
    yield path
    server.should_exit = True
    thread.join(10)


def test_status_headers_cookies_and_bodies_pass_through_both_ways(node_socket: str) -> None:
    async def scenario() -> None:
        forwarder = NodeForwarder(node_socket)
        transport = httpx.ASGITransport(app=forwarder, client=("203.0.113.9", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            for _ in range(100):  # the server thread starts
                try:
                    answer = await client.get("/cookies", headers={"x-journeys-client": "forged"})
                    break
                except Exception:
                    await asyncio.sleep(0.05)
            assert answer.status_code == 201
            assert answer.headers["x-node"] == "yes"
            assert sorted(answer.headers.get_list("set-cookie"))[0].startswith("csrf=c1")
            assert len(answer.headers.get_list("set-cookie")) == 2
            # The caller's address as the gateway saw it, never the caller's own claim.
            assert answer.json() == {"client": "203.0.113.9"}
            posted = await client.post("/echo?x=1", content=b"abc" * 1000)
            assert posted.status_code == 400
            assert posted.content == (b"abc" * 1000)[::-1]
            streamed = await client.get("/stream")
            assert streamed.text == "chunk0;chunk1;chunk2;"
            missing = await client.get("/nowhere")
            assert missing.status_code == 404
        await forwarder.aclose()

    asyncio.run(scenario())


def test_an_unreachable_node_is_a_503_naming_the_rule(tmp_path: Path) -> None:
    async def scenario() -> httpx.Response:
        forwarder = NodeForwarder(str(tmp_path / "absent.sock"))
        transport = httpx.ASGITransport(app=forwarder)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            answer = await client.get("/health")
        await forwarder.aclose()
        return answer

    answer = asyncio.run(scenario())
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["errors"][0]["rule"] == "unavailable"
