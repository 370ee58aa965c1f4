"""An aiohttp web application served over utcp, unchanged: the protocol factory that
aiohttp hands to `loop.create_server` goes to `utcp.create_server` instead.

    pip install aiohttp            # or: pip install -e '.[examples]'
    python examples/http_server.py [PORT]
    python examples/http_get.py PORT /hello/you      # a tiny HTTP client over utcp

Any TCP client reaches it through the tunnel:
    utcp tunnel --listen 127.0.0.1:8080 --remote 127.0.0.1:PORT &  curl localhost:8080/

aiohttp's `AppRunner` builds `runner.server`, an `aiohttp.web.Server`: calling it gives a
`RequestHandler`, an ordinary `asyncio.Protocol`. utcp's transport is a complete
`asyncio.Transport`, so the handler works on it as it does on a TCP socket
(`request.transport` is the `utcp.UtcpTransport`, whose `get_extra_info("stats")` the
/stats route shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys

from aiohttp import web

import utcp


async def index(request: web.Request) -> web.Response:
    return web.Response(text="aiohttp over utcp: try /hello/NAME, POST /echo, /stats\n")


async def hello(request: web.Request) -> web.Response:
    return web.Response(text=f"hello, {request.match_info['name']}\n")


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), content_type="application/octet-stream")


async def stats(request: web.Request) -> web.Response:
    transport = request.transport
    assert transport is not None
    snapshot = transport.get_extra_info("stats")
    fields = {k: (v.name if isinstance(v, utcp.State) else v)
              for k, v in dataclasses.asdict(snapshot).items()}
    return web.json_response({"peer": list(transport.get_extra_info("peername")[:2]),
                              "state": transport.get_extra_info("state").name,
                              "stats": fields})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/hello/{name}", hello)
    app.router.add_post("/echo", echo)
    app.router.add_get("/stats", stats)
    return app


async def main(port: int) -> None:
    runner = web.AppRunner(make_app())
    await runner.setup()
    assert runner.server is not None
    # was: await loop.create_server(runner.server, "127.0.0.1", port)
    server = await utcp.create_server(runner.server, "127.0.0.1", port)
    print(f"aiohttp over utcp on udp 127.0.0.1 port {server.sockets[0].getsockname()[1]}",
          flush=True)
    try:
        async with server:
            await server.serve_forever()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8000))
