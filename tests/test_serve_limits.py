"""The service under slow or unknown clients: read timeouts, a connection cap, an API key, CORS.

Live servers run on 127.0.0.1 only, in a thread of this process (and one `mmfuse serve`
subprocess); the slow clients are few (at most 40) and bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import os
import pickle
import select
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from mmfuse.cli import serve as serve_cli
from mmfuse.serve import run as serve_run
from mmfuse.serve.app import create_app
from mmfuse.serve.auth import ENV_API_KEY
from mmfuse.serve.protocol import ConnectionLimits, attach
from serve_helpers import serving
from test_serve import tiny_model

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory)[0]


def running(app, limits: ConnectionLimits):
    """`app` behind `LimitedH11Protocol` on a free loopback port; yields (host, port)."""
    return serving(app, limits=limits)


def slow_client(address, head: bytes, trickle: bytes, seconds: float):
    """Send `head`, then `trickle` one byte every 50 ms. Returns (what the server sent, seconds
    until it closed the connection; None if it was still open after `seconds`)."""
    with socket.create_connection(address) as sock:
        start = time.monotonic()
        sock.sendall(head)
        answer, i = b"", 0
        while time.monotonic() - start < seconds:
            if select.select([sock], [], [], 0.05)[0]:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    return answer, time.monotonic() - start
                answer += chunk
            elif trickle:
                with contextlib.suppress(OSError):
                    sock.send(trickle[i % len(trickle) : i % len(trickle) + 1])
                i += 1
        return answer, None


HEADERS = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
BODY_HEAD = (
    b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
    b"Content-Type: multipart/form-data; boundary=b0undary\r\n\r\n"
    b'--b0undary\r\nContent-Disposition: form-data; name="text"\r\n\r\n'
)
SLOW = {  # kind: (what is sent at once, what is then trickled)
    "idle": (b"", b""),
    "headers": (HEADERS, b"X-Slow: yes\r\n"),
    "body": (BODY_HEAD, b"a red square "),
}


def test_slow_clients_are_disconnected_and_others_are_served(model_dir):
    limits = ConnectionLimits(header_timeout=1.5, body_timeout=1.5, max_connections=100)
    app = create_app(model_dir)
    with running(app, limits) as address, ThreadPoolExecutor(40) as pool:
        kinds = [k for k in SLOW for _ in range(10)]
        slow = [pool.submit(slow_client, address, *SLOW[k], 8.0) for k in kinds]
        time.sleep(0.3)  # the slow clients are connected and trickling
        took = []
        with httpx.Client(base_url="http://{}:{}".format(*address), timeout=10) as client:
            for _ in range(5):
                start = time.monotonic()
                response = client.post("/predict", files={"text": (None, "a red square")})
                took.append(time.monotonic() - start)
                assert response.status_code == 200, response.text
        assert max(took) < 1.5, took  # answered while the slow clients were still held
        for kind, future in zip(kinds, slow):
            answer, closed_after = future.result()
            assert closed_after is not None, f"a {kind} client was never disconnected"
            assert 1.4 < closed_after < 4.0, (kind, closed_after)
            assert answer.startswith(b"HTTP/1.1 408 "), (kind, answer[:200])
            assert b'"reason":"timeout"' in answer.replace(b" ", b"")


def test_connections_past_the_cap_get_a_503_and_the_rest_are_served(model_dir):
    limits = ConnectionLimits(header_timeout=30, body_timeout=30, max_connections=4)
    app = create_app(model_dir)
    with running(app, limits) as address:
        url = "http://{}:{}".format(*address)
        idle = [socket.create_connection(address) for _ in range(4)]
        try:
            time.sleep(0.5)  # all four accepted
            with httpx.Client(base_url=url, timeout=10) as client:
                refused = client.get("/health")
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"]["reason"] == "busy"
                assert "4 open connections" in refused.json()["error"]["message"]
            idle.pop().close()
            time.sleep(0.5)
            with httpx.Client(base_url=url, timeout=10) as client:
                assert client.get("/health").status_code == 200
        finally:
            for s in idle:
                s.close()


# ---------------------------------------------------------------------------------- API key
def test_api_key_guards_every_route_but_health_and_the_page(model_dir, monkeypatch):
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    with TestClient(create_app(model_dir, api_key=KEY)) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/").status_code == 200  # static HTML; it asks for the key
        for path in ("/model", "/docs", "/openapi.json"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert response.json()["error"]["reason"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
        sample = {"text": (None, "a red square")}
        for header in ("Bearer wrong", f"Basic {KEY}", KEY, f"Bearer {KEY}x"):
            answer = client.post("/predict", files=sample, headers={"Authorization": header})
            assert answer.status_code == 401, header
            assert "does not hold this server's API key" in answer.json()["error"]["message"]
        good = {"Authorization": f"Bearer {KEY}"}
        assert client.get("/model", headers=good).status_code == 200
        assert client.post("/predict", files=sample, headers=good).status_code == 200
    assert compared  # checked with hmac.compare_digest (constant time)


def test_no_key_and_no_cors_by_default(model_dir):
    with TestClient(create_app(model_dir)) as client:
        response = client.get("/model", headers={"Origin": "https://elsewhere.example"})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers
        preflight = client.options(
            "/predict",
            headers={
                "Origin": "https://elsewhere.example",
                "Access-Control-Request-Method": "POST",
            },
        )
        assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_the_given_origins_only_and_preflight_needs_no_key(model_dir):
    app = create_app(model_dir, api_key=KEY, cors_origins=["https://app.example"])
    with TestClient(app) as client:
        preflight = client.options(
            "/predict",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        denied = client.get("/model", headers={"Origin": "https://app.example"})
        assert denied.status_code == 401  # and the browser may read why
        assert denied.headers["access-control-allow-origin"] == "https://app.example"
        other = client.get(
            "/model", headers={"Origin": "https://evil.example", "Authorization": f"Bearer {KEY}"}
        )
        assert "access-control-allow-origin" not in other.headers


# ---------------------------------------------------------------------------------- the command
def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_flags_defaults_and_the_key_from_the_environment(model_dir, monkeypatch, capsys):
    args = parse(str(model_dir))
    assert (args.host, args.header_timeout, args.body_timeout) == ("127.0.0.1", 10.0, 60.0)
    assert (args.max_connections, args.api_key, args.cors_origin) == (100, None, [])
    for bad in (["--cors-origin", "https://a.example/path"], ["--header-timeout", "0"]):
        with pytest.raises(SystemExit):
            parse(str(model_dir), *bad)
    calls = []
    monkeypatch.setattr(serve_run, "serve", lambda *a, **k: calls.append(k))
    monkeypatch.setenv(ENV_API_KEY, "from-env")
    serve_cli.run(parse(str(model_dir), "--cors-origin", "http://localhost:3000"))
    serve_cli.run(parse(str(model_dir), "--api-key", "from-flag", "--max-connections", "7"))
    monkeypatch.delenv(ENV_API_KEY)
    serve_cli.run(parse(str(model_dir), "--host", "0.0.0.0"))
    assert [k["api_key"] for k in calls] == ["from-env", "from-flag", None]
    assert calls[0]["cors_origins"] == ["http://localhost:3000"]
    assert calls[1]["limits"] == ConnectionLimits(10.0, 60.0, 7)
    assert "with no API key" in capsys.readouterr().err  # only for the exposed one


def test_limits_reach_every_worker_process(model_dir, monkeypatch):
    config = uvicorn.Config("mmfuse.serve.run:app_from_env", factory=True, workers=2)
    attach(config, ConnectionLimits(3, 4, 5))
    copy = pickle.loads(pickle.dumps(config))  # what uvicorn hands each spawned worker
    assert copy.mmfuse_connection_limits == ConnectionLimits(3, 4, 5)
    monkeypatch.setenv(serve_run.ENV_MODEL_DIR, str(model_dir))
    monkeypatch.setenv(serve_run.ENV_OPTIONS, f'{{"api_key": "{KEY}"}}')
    with TestClient(serve_run.app_from_env()) as client:
        assert client.get("/model").status_code == 401
        assert client.get("/health").status_code == 200


def test_mmfuse_serve_end_to_end_with_a_key_and_a_header_timeout(model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "mmfuse", "serve", str(model_dir), "--port", str(port)]
    command += ["--header-timeout", "1", "--log-level", "warning"]
    env = {**os.environ, ENV_API_KEY: KEY}
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "mmfuse serve did not start"
            time.sleep(0.2)
        assert httpx.get(f"{url}/model", timeout=5).status_code == 401
        good = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{url}/model", headers=good, timeout=5).status_code == 200
        answer, closed_after = slow_client(("127.0.0.1", port), b"", b"", 6.0)
        assert closed_after is not None and answer.startswith(b"HTTP/1.1 408 ")
    finally:
        server.terminate()
        server.wait(timeout=20)
