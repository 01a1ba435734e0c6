"""HTTP service: contract, limits and bad input (real shipped models loaded once; few real predictions)."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from importlib import resources

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("python_multipart")

from fastapi.testclient import TestClient  # noqa: E402

from agelens.inference.predictor import FacePrediction  # noqa: E402
from agelens.serve.app import create_app  # noqa: E402

UPLOAD_LIMIT = 512 * 1024


@pytest.fixture(scope="module")
def astronaut() -> bytes:
    return (resources.files("agelens") / "assets" / "astronaut.jpg").read_bytes()


@pytest.fixture(scope="module")
def client():
    from agelens.inference.predictor import AgeEstimator

    app = create_app(AgeEstimator.from_pretrained(), max_upload_bytes=UPLOAD_LIMIT, max_pixels=4_000_000)
    with TestClient(app) as c:  # runs the lifespan: warm-up
        yield c


class FakeEstimator:
    """predict() → one fixed face, or raises what it is given."""

    name, route, student, detector = "fake", "auto", None, None

    def __init__(self, exc: Exception | None = None) -> None:
        self.exc, self.calls = exc, []

    def predict(self, rgb, detect=True):
        self.calls.append((rgb.shape, detect))
        if self.exc is not None:
            raise self.exc
        return [FacePrediction([1.0, 2.0, 3.0, 4.0], 30.0, 2.0, [26.7, 33.3], 0.9, "fake",
                               extra={"occluded": False, "occlusion_score": 0.01, "timing": {}})]


def png_bytes(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", **kw)
    return buf.getvalue()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A real, valid 1-bit PNG of width×height all-black pixels: ~50 MB of pixels in a ~50 kB file."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def post_file(client, data: bytes, ctype: str = "image/jpeg", name: str = "photo.jpg", **kw):
    return client.post("/v1/predict", files={"file": (name, data, ctype)}, **kw)


def assert_error(r, status: int, fragment: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert fragment in body["detail"], body
    assert "Traceback" not in r.text


def test_healthz_names_models(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["models"]["teacher"] == "teacher"
    assert body["models"]["occlusion_detector"] == "occlusion" and body["models"]["student"] == "student"
    assert body["limits"] == {"max_upload_bytes": UPLOAD_LIMIT, "max_pixels": 4_000_000, "max_queue": 64}


def test_index_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'type="file"' in r.text and "v1/predict" in r.text and "<canvas" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # no external assets


def test_multipart_astronaut(client, astronaut):
    r = post_file(client, astronaut)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"] == {"width": 512, "height": 512}
    assert body["message"] is None and len(body["faces"]) >= 1
    f = body["faces"][0]
    assert 15 <= f["age"] <= 60 and f["interval"][0] <= f["age"] <= f["interval"][1]
    assert f["model"] in ("teacher", "student") and f["occluded"] in (True, False)
    assert 0 <= f["occlusion_score"] <= 1 and f["detection_score"] > 0.5
    x1, y1, x2, y2 = f["box"]
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512
    assert {"decode_ms", "detect_ms", "model_ms", "total_ms"} <= body["timings"].keys()


def test_base64_json_with_data_url_and_path_like_filename(client, astronaut):
    b64 = base64.b64encode(astronaut).decode()
    r = client.post("/v1/predict", json={"image": "data:image/jpeg;base64," + b64})
    assert r.status_code == 200, r.text
    ages = [f["age"] for f in r.json()["faces"]]
    assert len(ages) >= 1
    # a client file name is never used for anything: same answer whatever it claims to be
    r2 = post_file(client, astronaut, name="../../etc/passwd")
    assert r2.status_code == 200 and [f["age"] for f in r2.json()["faces"]] == ages


def test_no_face_is_200_with_message(client):
    r = post_file(client, png_bytes(np.full((96, 96, 3), 128, np.uint8)), "image/png", "grey.png")
    assert r.status_code == 200
    body = r.json()
    assert body["faces"] == [] and body["message"] == "no face found"
    assert body["image"] == {"width": 96, "height": 96}
    t = body["timings"]  # the search that found nothing is detection time (it was null)
    assert isinstance(t["detect_ms"], float) and 0 <= t["detect_ms"] <= t["total_ms"] and t["model_ms"] == 0


def test_oversized_body_413(client):
    big = b"\xff\xd8" + b"\0" * (UPLOAD_LIMIT + 10)
    assert_error(post_file(client, big), 413, "upload limit")
    assert_error(client.post("/v1/predict", content=big, headers={"content-type": "image/jpeg"}), 413, "upload limit")


def test_oversized_streamed_body_counted_413(client):
    """No Content-Length (chunked): the bytes actually received are counted."""
    def gen():
        for _ in range(20):
            yield b"\0" * 65536

    r = client.post("/v1/predict", content=gen(), headers={"content-type": "application/octet-stream"})
    assert_error(r, 413, "upload limit")


def test_huge_dimensions_413(client):
    bomb = bomb_png()
    assert len(bomb) < UPLOAD_LIMIT
    assert_error(post_file(client, bomb, "image/png", "bomb.png"), 413, "pixel limit")
    # under PIL's own guard but over the app's max_pixels (4 MP)
    wide = png_bytes(np.zeros((10, 500_000), np.uint8) > 0)
    assert_error(post_file(client, wide, "image/png", "wide.png"), 413, "500000x10, over the 4,000,000-pixel limit")


@pytest.mark.parametrize("ctype", ["text/plain", "application/pdf"])
def test_non_image_part_415(client, ctype):
    assert_error(post_file(client, b"hello world", ctype, "notes.txt"), 415, "not an image")


def test_text_body_415(client):
    r = client.post("/v1/predict", content=b"hello", headers={"content-type": "text/plain"})
    assert_error(r, 415, "unsupported content type 'text/plain'")
    assert_error(client.post("/v1/predict", content=b"x"), 415, "unsupported content type")
    r = client.post("/v1/predict", json={"image": "data:text/plain;base64,aGVsbG8="})
    assert_error(r, 415, "not an image")


def test_undecodable_422(client, astronaut):
    rng = np.random.default_rng(0)
    assert_error(post_file(client, astronaut[:2000]), 422, "cut short (truncated)")
    assert_error(post_file(client, rng.bytes(5000)), 422, "not a recognised image format")
    assert_error(post_file(client, b""), 422, "empty file")
    assert_error(post_file(client, png_bytes(np.zeros((1, 1, 3), np.uint8)), "image/png"), 422, "too small")


@pytest.mark.parametrize("payload,fragment", [
    ({"image": "not base64 at all!"}, "not valid base64"),
    ({"image": "aGVsbG8"}, "not valid base64"),  # bad padding
    ({"image": "data:image/png,abc"}, "must be base64-encoded"),
    ({"image": 12}, "must be a base64 string"),
    ({"picture": "aGVsbG8="}, 'with an "image" field'),
    ([1, 2], 'with an "image" field'),
    ({"image": "aGVsbG8="}, "not a recognised image format"),
    ({"image": ""}, "empty file"),
])
def test_bad_json_422(client, payload, fragment):
    assert_error(client.post("/v1/predict", json=payload), 422, fragment)


def test_malformed_requests_422(client, astronaut):
    r = client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 422, "not valid JSON")
    deep = b"[" * 200_000 + b"]" * 200_000  # nested beyond the parser's recursion limit: a 422, not a 500
    assert_error(client.post("/v1/predict", content=deep, headers={"content-type": "application/json"}), 422,
                 "not valid JSON")
    r = client.post("/v1/predict", files={"other": ("a.jpg", astronaut, "image/jpeg")})
    assert_error(r, 422, 'missing form field "file"')
    r = client.post("/v1/predict", data={"file": "just text"})  # urlencoded form
    assert_error(r, 415, "unsupported content type 'application/x-www-form-urlencoded'")
    r = client.post("/v1/predict", files={"file": (None, b"just text")})  # a plain form field, no type
    assert_error(r, 422, "not a recognised image format")
    r = client.post("/v1/predict", content=b"--x\r\ngarbage", headers={"content-type": "multipart/form-data"})
    assert_error(r, 422, "without a boundary")
    r = client.post("/v1/predict?detect=maybe", files={"file": ("a.jpg", astronaut, "image/jpeg")})
    assert_error(r, 422, "detect must be true or false")


def test_fake_estimator_detect_flag_and_raw_body():
    est = FakeEstimator()
    with TestClient(create_app(est)) as c:
        img = png_bytes(np.zeros((20, 30, 3), np.uint8))
        r = c.post("/v1/predict?detect=false", files={"file": ("x.png", img, "image/png")})
        assert r.status_code == 200 and r.json()["faces"][0]["model"] == "fake"
        r = c.post("/v1/predict", files={"file": ("x.png", img, "application/octet-stream")}, data={"detect": "no"})
        assert r.status_code == 200
        r = c.post("/v1/predict", content=img, headers={"content-type": "image/png"})
        assert r.status_code == 200 and r.json()["image"] == {"width": 30, "height": 20}
        r = c.post("/v1/predict", json={"image": base64.b64encode(img).decode(), "detect": False})
        assert r.status_code == 200
    assert [d for _, d in est.calls[1:]] == [False, False, True, False]  # calls[0] is the warm-up
    assert all(shape == (20, 30, 3) for shape, _ in est.calls[1:])


def test_exif_orientation_honoured():
    est = FakeEstimator()
    im = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    r = TestClient(create_app(est)).post("/v1/predict", content=buf.getvalue(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and r.json()["image"] == {"width": 20, "height": 40}


def test_a_large_jpeg_upload_is_read_at_half_size_and_answered_in_its_own_pixels():
    est = FakeEstimator()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((3024, 4032, 3), np.uint8)).save(buf, "JPEG")
    app = create_app(est, max_upload_bytes=2**24)
    r = TestClient(app).post("/v1/predict", content=buf.getvalue(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert est.calls[-1][0] == (1512, 2016, 3)  # the estimator saw the reduced decode
    assert r.json()["image"] == {"width": 4032, "height": 3024}
    assert r.json()["faces"][0]["box"] == [2.0, 4.0, 6.0, 8.0]  # the fake's box, back in the upload's pixels


def test_estimator_crash_is_clean_500():
    c = TestClient(create_app(FakeEstimator(RuntimeError("boom /secret/path"))))
    r = c.post("/v1/predict", content=png_bytes(np.zeros((8, 8, 3), np.uint8)), headers={"content-type": "image/png"})
    assert_error(r, 500, "internal error")
    assert "boom" not in r.text and "secret" not in r.text


def test_cli_serve_rejects_bad_options():
    import os
    import subprocess
    import sys

    env = {**os.environ, "GLOG_minloglevel": "3", "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-m", "agelens.cli", "serve", "--port", "70000"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: --port must be in 0..65535 (0: any free port), got 70000" in r.stderr


def test_a_full_queue_answers_503_at_once():
    est = FakeEstimator()
    app = create_app(est, max_queue=2)
    with TestClient(app) as c:
        img = png_bytes(np.zeros((20, 30, 3), np.uint8))
        app.state.service.pending = 3  # one answered, two waiting: full
        r = c.post("/v1/predict", content=img, headers={"content-type": "image/png"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["detail"]
        app.state.service.pending = 0
        r = c.post("/v1/predict", content=img, headers={"content-type": "image/png"})
        assert r.status_code == 200 and app.state.service.pending == 0


def test_waiting_images_are_bounded_by_their_pixels_and_a_full_queue_decodes_nothing(monkeypatch):
    """Ten 39 MP PNGs of 130 KB each, under every byte and pixel limit, held 4 GB decoded while they waited."""
    import agelens.serve.app as A

    est = FakeEstimator()
    app = create_app(est, max_queue=8)
    with TestClient(app) as c:
        img = png_bytes(np.zeros((20, 30, 3), np.uint8))
        svc = app.state.service
        svc.pending, svc.waiting_pixels = 1, A.WAIT_PIXELS - 100  # one large image being answered
        calls = len(est.calls)  # the start-up's warm-up call
        r = c.post("/v1/predict", content=img, headers={"content-type": "image/png"})
        assert r.status_code == 503 and "busy" in r.json()["detail"] and len(est.calls) == calls
        svc.pending, svc.waiting_pixels = 9, 0  # a full queue: refused before the upload is decoded
        monkeypatch.setattr(A, "decode_reduced", lambda *a, **k: pytest.fail("decoded"))
        assert c.post("/v1/predict", content=img, headers={"content-type": "image/png"}).status_code == 503
        monkeypatch.undo()
        svc.pending = 0
        r = c.post("/v1/predict", content=img, headers={"content-type": "image/png"})
        assert r.status_code == 200 and svc.pending == 0 and svc.waiting_pixels == 0


def test_a_request_whose_client_has_gone_is_dropped_at_its_turn():
    import asyncio

    est = FakeEstimator()
    app = create_app(est)
    img = png_bytes(np.zeros((20, 30, 3), np.uint8))
    messages = [{"type": "http.request", "body": img, "more_body": False}]  # then the client goes

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent: list = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"image/png"), (b"content-length", str(len(img)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 499 and est.calls == [] and app.state.service.pending == 0  # the model never ran


def test_cli_serve_ends_with_status_0_on_sigterm():
    """SIGTERM is a service manager's stop: the server drains and the process ends 0 (143 marked a systemd unit as
    failed)."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "agelens", "serve", "--port", str(port)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                assert p.poll() is None, p.stderr.read()
                time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
        assert f"listening on http://127.0.0.1:{port}" in p.stderr.read()  # uvicorn no longer says it: we bind
    finally:
        p.kill()


def test_browser_pages_of_allowed_origins_may_call_the_api():
    """CORS: without --allow-origin a page elsewhere gets no permission to read the answers; with it, the preflight
    and the answer carry that origin (before: no CORS at all, so a web app on another origin could not call it)."""
    img = png_bytes(np.zeros((20, 30, 3), np.uint8))
    origin = {"origin": "https://app.example.com"}
    with TestClient(create_app(FakeEstimator())) as c:
        r = c.post("/v1/predict", content=img, headers={"content-type": "image/png", **origin})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    with TestClient(create_app(FakeEstimator(), allow_origins=["https://app.example.com"])) as c:
        pre = c.options("/v1/predict", headers={**origin, "access-control-request-method": "POST",
                                                "access-control-request-headers": "content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example.com"
        r = c.post("/v1/predict", content=img, headers={"content-type": "image/png", **origin})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        other = c.post("/v1/predict", content=img, headers={"content-type": "image/png",
                                                            "origin": "https://evil.example.org"})
        assert "access-control-allow-origin" not in other.headers


def test_a_body_that_stalls_is_answered_408_and_freed(monkeypatch):
    """A client that sends part of a body and stalls would hold it in memory for as long as it likes."""
    import anyio

    import agelens.serve.app as app_mod
    from agelens.serve.app import RequestError, read_body

    class Stalling:
        headers = {"content-length": "1000"}

        async def stream(self):
            yield b"x" * 10
            await anyio.sleep(30)
            yield b"never"

    monkeypatch.setattr(app_mod, "BODY_SECONDS", 0.2)

    async def main():
        with pytest.raises(RequestError) as e:
            await read_body(Stalling(), 10_000)
        return e.value

    err = anyio.run(main)
    assert err.status == 408 and "stopped arriving" in err.message and "10 bytes came" in err.message

    class Steady:  # slower in all than the deadline, but never silent for as long: it is read whole
        headers = {"content-length": "50"}

        async def stream(self):
            for _ in range(5):
                await anyio.sleep(0.1)
                yield b"y" * 10

    assert anyio.run(read_body, Steady(), 10_000) == b"y" * 50
