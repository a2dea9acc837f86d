"""A real server for the API and page tests: uvicorn in a subprocess on a free loopback port."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SERVE_MISSING = [
    m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None
]
if SERVE_MISSING:  # the server tests need the serve extra; say so instead of failing to import
    collect_ignore_glob = ["test_*.py"]
    print(
        f"tests/serve skipped: {', '.join(SERVE_MISSING)} missing (pip install 'modalign[serve]')"
    )

HERE = Path(__file__).parent
UPLOAD_LIMIT_MB = 0.25


def helpers() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_real_encoder_loader", HERE.parent / "index" / "real_encoder.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.load_helper_module()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The running server: its base URL, the index folder, and a raw HTTP helper."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port, self.folder = port, folder
        self.url = f"http://127.0.0.1:{port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def post_json(self, path: str, obj: Any) -> tuple[int, Any]:
        status, _, data = self.request(
            "POST", path, json.dumps(obj).encode(), {"Content-Type": "application/json"}
        )
        return status, json.loads(data)

    def upload(
        self,
        data: bytes,
        content_type: str,
        fields: dict[str, str] | None = None,
        filename: str = "q.png",
    ) -> tuple[int, Any]:
        body, ctype = multipart({"file": (filename, data, content_type)}, fields or {})
        status, _, out = self.request("POST", "/search/file", body, {"Content-Type": ctype})
        return status, json.loads(out)


def multipart(
    files: dict[str, tuple[str, bytes, str]], fields: dict[str, str]
) -> tuple[bytes, str]:
    boundary = "modalign-test-boundary-7d1f"
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, data, ctype) in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="session")
def search_helpers() -> Any:
    return helpers()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "server_main.py"), str(root), str(port), str(UPLOAD_LIMIT_MB)],
        env=env,
    )
    srv = Server(port, root)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if srv.request("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.2)
        yield srv
    finally:
        proc.terminate()
        proc.wait(timeout=30)
