"""Static HTTP servers used as ceilings by ``benchmarks/dicomweb.py`` (not part of Coffre).

    python benchmarks/_static_server.py uvicorn  PORT FOLDER
    python benchmarks/_static_server.py sendfile PORT FOLDER

``GET /NAME`` answers the bytes of ``FOLDER/NAME`` (no authentication, no index, no
multipart framing), ``200`` with ``Content-Length``, HTTP/1.1 keep-alive, TCP_NODELAY on
every accepted connection (as ``coffre serve``).

- ``uvicorn``: the stack Coffre's HTTP side runs on (uvicorn, h11, asyncio, no uvloop),
  with a bare ASGI app: files under 4 MiB are sent from memory in one body message, larger
  ones read in 1 MiB pieces (Coffre reads blobs in 1 MiB pieces) through a thread. This is
  "what a Python ASGI server on this machine can serve", the fair ceiling of Coffre's
  HTTP stack.
- ``sendfile``: a minimal threaded HTTP/1.1 server that sends the body with
  ``socket.sendfile`` (zero-copy, as nginx with ``sendfile on``): the loopback ceiling.

Prints ``ready PORT`` on stdout once listening.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

SMALL = 4 * 1024 * 1024
PIECE = 1024 * 1024


def listening_socket(port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio then sets TCP_NODELAY on accepted connections
    # (the same trick as coffre.cli.listening_socket).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def _resolve(folder: Path, raw_path: str) -> Path | None:
    name = raw_path.split("?", 1)[0].lstrip("/")
    if not name or "/" in name or name.startswith("."):
        return None
    path = folder / name
    return path if path.is_file() else None


def run_uvicorn(port: int, folder: Path) -> None:
    import anyio
    import uvicorn

    cache: dict[Path, bytes] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = _resolve(folder, scope["path"])
        if path is None:
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        size = path.stat().st_size
        headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(size).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if size <= SMALL:
            body = cache.get(path)
            if body is None:
                body = cache[path] = path.read_bytes()
            await send({"type": "http.response.body", "body": body})
            return
        with path.open("rb") as f:
            while True:
                piece = await anyio.to_thread.run_sync(f.read, PIECE)
                if not piece:
                    break
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    sock = listening_socket(port)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    print(f"ready {port}", flush=True)
    server.run(sockets=[sock])


def _serve_connection(conn: socket.socket, folder: Path) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            close = any(line.lower().replace(" ", "") == "connection:close" for line in lines[1:])
            path = _resolve(folder, parts[1]) if len(parts) == 3 else None
            if path is None:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                continue
            size = path.stat().st_size
            conn.sendall(f"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                         f"content-length: {size}\r\n{'connection: close' + chr(13) + chr(10) if close else ''}"
                         "\r\n".encode("latin-1"))
            with path.open("rb") as f:
                conn.sendfile(f)
            if close:
                return


def run_sendfile(port: int, folder: Path) -> None:
    sock = listening_socket(port)
    print(f"ready {port}", flush=True)
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_serve_connection, args=(conn, folder), daemon=True).start()


def main() -> None:
    mode, port, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    os.chdir(folder)
    if mode == "uvicorn":
        run_uvicorn(port, folder)
    elif mode == "sendfile":
        run_sendfile(port, folder)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
