"""Secret-scanning flood (issue 24 row 4): unauthenticated 5 MiB reports at once.

Starts a redis-server, a tiny upstream and one sidecar (attack_rig.py) serving the
secret-scanning endpoint with a public-keys file of one ECDSA key. Then ``--reports``
connections at once each POST ``--mib`` MiB minus one byte of junk, as fast as
loopback takes it, ``--repeat`` times. ``--signature known`` (the worst case: GitHub's
key identifiers are public, so an attacker can name one and send a well-formed
signature that is wrong) or ``junk`` (not base64). ``--hold``: each declares one byte
more than it sends, so the body never completes and the sidecar holds what it read
until it gives up (the attack of the issue). Prints the sidecar's RSS before, at
its peak (sampled every 10 ms, and VmHWM) and after, and the answers by status. It
measures; it asserts nothing.

    .venv/bin/python -m bench.scanning_flood [--reports 40] [--mib 5] [--signature known]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.attack_rig import Rig, running

PATH = "/api/v1/secret-scanning/"
IDENTIFIER = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a"
_PIECE = 64 * 1024


def _keys_file(directory: Path) -> tuple[Path, str]:
    """A public-keys document of one key, and a signature by it over something else."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    entry = {"key_identifier": IDENTIFIER, "key": pem.decode(), "is_current": True}
    path = directory / "github-keys.json"
    path.write_bytes(orjson.dumps({"public_keys": [entry]}))
    signature = private.sign(b"another body", ec.ECDSA(hashes.SHA256()))
    return path, base64.b64encode(signature).decode()


async def post_junk(
    port: int, size: int, signature: str, answers: dict[str, int], *, hold: bool
) -> None:
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: flood\r\nContent-Type: application/json\r\n"
        f"Github-Public-Key-Identifier: {IDENTIFIER}\r\n"
        f"Github-Public-Key-Signature: {signature}\r\nContent-Length: {size + hold}\r\n\r\n"
    ).encode()
    piece = b"[" * _PIECE
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    sent = 0
    try:
        while sent < size:
            writer.write(piece[: min(_PIECE, size - sent)])
            sent += min(_PIECE, size - sent)
            await writer.drain()
    except OSError:
        pass  # refused before the whole body: the answer may still be readable
    try:
        answer = await asyncio.wait_for(reader.read(64), 60)
        kind = answer[9:12].decode(errors="replace") if answer else "closed, no answer"
    except OSError:
        kind = "reset, no answer"
    except TimeoutError:
        kind = "no answer within 60 s"
    kind = f"{kind} after {'all' if sent >= size else f'{sent // 1024} KiB'} of the body sent"
    answers[kind] = answers.get(kind, 0) + 1
    writer.close()


async def measure(rig: Rig, args: argparse.Namespace, signature: str) -> None:
    before, hwm_before = rig.status("VmRSS"), rig.status("VmHWM")
    peak = [before]
    sampling = True

    def sample() -> None:
        while sampling:
            peak[0] = max(peak[0], rig.status("VmRSS"))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    size = args.mib * 1024 * 1024 - 1
    answers: dict[str, int] = {}
    started = time.perf_counter()
    for _ in range(args.repeat):
        await asyncio.gather(
            *(
                post_junk(rig.port, size, signature, answers, hold=args.hold)
                for _ in range(args.reports)
            )
        )
    elapsed = time.perf_counter() - started
    sampling = False
    sampler.join()
    await asyncio.sleep(1.0)
    after, hwm = rig.status("VmRSS"), rig.status("VmHWM")
    print(f"flood: {args.reports} concurrent reports of {args.mib} MiB - 1 byte, "
          f"{args.repeat} time(s), signature {args.signature}"
          f"{', held one byte short' if args.hold else ''}: {elapsed:.1f} s")  # fmt: skip
    print(f"sidecar RSS: before {before / 1024:.1f} MiB, peak {peak[0] / 1024:.1f} MiB "
          f"(+{(peak[0] - before) / 1024:.1f} MiB), after {after / 1024:.1f} MiB; "
          f"VmHWM {hwm_before / 1024:.1f} -> {hwm / 1024:.1f} MiB "
          f"(+{(hwm - hwm_before) / 1024:.1f} MiB)")  # fmt: skip
    for kind, count in sorted(answers.items()):
        print(f"  {count:4d} x {kind}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=40)
    parser.add_argument("--mib", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--signature", choices=["known", "junk"], default="known")
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--max-concurrent-reports", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scanning-flood-keys-") as name:
        keys, signature = _keys_file(Path(name))
        if args.signature == "junk":
            signature = "junk!" * 10
        scanning: dict[str, object] = {"enabled": True, "public_keys_file": str(keys)}
        if args.max_concurrent_reports is not None:
            scanning["max_concurrent_reports"] = args.max_concurrent_reports
        with running({"secret_scanning": scanning}, prefix="scanning-flood-") as rig:
            asyncio.run(measure(rig, args, signature))
    return 0


if __name__ == "__main__":
    sys.exit(main())
