"""The public server moves start-up's heap out of the cyclic collector's reach."""

from __future__ import annotations

import asyncio
import gc

import uvicorn

from sidecar.server.serving import Server, bind


async def _empty_app(scope: object, receive: object, send: object) -> None:
    return None


async def _frozen_after_start(freeze_heap: bool) -> int:
    sock = bind("127.0.0.1", 0)
    server = Server(
        uvicorn.Config(_empty_app, lifespan="off", log_config=None),
        handle_signals=False,
        freeze_heap=freeze_heap,
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        return gc.get_freeze_count()
    finally:
        server.should_exit = True
        await serving
        sock.close()


def test_the_public_server_freezes_what_start_up_allocated() -> None:
    gc.unfreeze()
    try:
        assert asyncio.run(_frozen_after_start(freeze_heap=False)) == 0
        assert asyncio.run(_frozen_after_start(freeze_heap=True)) > 10_000
    finally:
        gc.unfreeze()  # the rest of the test run keeps a normal collector
