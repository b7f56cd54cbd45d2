"""The soak's upstream: a real HTTP server (uvicorn, its own process) that answers every
request and records, for each one, the identity the sidecar injected and the credential
tag the soak's client sent (``X-Soak-Tag``), one JSON line per request. The soak reads
the record every second and checks each line against its ledger of keys and users.

Request bodies are streamed through SHA-256 and echoed as ``{"size", "sha256"}``, so a
large upload is checked end to end without being kept in memory.

    python bench/soak_upstream.py --port PORT --record FILE
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from typing import Any

import orjson
import uvicorn


def app_for(record_path: str) -> Any:
    record = open(record_path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            digest.update(chunk)
            if not message.get("more_body"):
                break
        line = {
            "t": time.time(),
            "tag": headers.get("x-soak-tag"),
            "user": headers.get("x-callcov-user-id"),
            "method": headers.get("x-callcov-auth-method"),
            "key": headers.get("x-callcov-key-id"),
            "api_key_header": "x-api-key" in headers,
            "path": scope["path"],
            "size": size,
        }
        record.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
        body = orjson.dumps({"size": size, "sha256": digest.hexdigest()})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    print(f"soak upstream pid {os.getpid()} on :{args.port}", flush=True)
    uvicorn.run(
        app_for(args.record),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
        timeout_keep_alive=5,
    )


if __name__ == "__main__":
    main()
