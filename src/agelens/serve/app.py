"""HTTP service around AgeEstimator: POST /v1/predict, GET /healthz and a demo page at GET /.

Uploads are read into memory with a byte budget (Content-Length checked first, then every byte counted), decoded
in memory by `imageio.decode_reduced` (pixel limit on the pixels decoded, checked from the header before decoding; a
large JPEG decoded at the size the faces need, boxes and size reported in the upload's pixels) and run through one
estimator, one image at a time, in a worker thread. Bad input is always a 4xx with `{"detail": message}`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import ClientDisconnect

from ..errors import AgelensError, ImageError, ImageTooLargeError, NoFaceError
from ..imageio import FACE_MIN_SIDE, decode_reduced, file_box

log = logging.getLogger("agelens.serve")

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # whole request body; base64 JSON carries ~7.5 MB of image
# pixels decoded, e.g. 8000×5000; a larger JPEG counts at the size it decodes at (1/2-1/8), other formats at their own
# size, under Pillow's bomb guard (~89 MP) too
DEFAULT_MAX_PIXELS = 40_000_000
# requests that may wait for the models beside the one they are answering: beyond it a request gets 503 at once (a
# queue that only grows, as under clients that time out and retry, would leave every request answered too late)
DEFAULT_MAX_QUEUE = 64  # the load test's 50 concurrent clients all wait (docs/load_test.json)
# decoded pixels that may wait for the models beside the image being answered: a decoded image holds 3 bytes a pixel
# until its turn, so ten 39 MP PNGs of 130 KB each (under every byte and pixel limit) held 4 GB; beyond this budget a
# request gets 503 at once, as on a full queue (an image alone may always wait, however large)
WAIT_PIXELS = 200_000_000
MAX_PARTS = 8  # multipart parts accepted in one request
# a request body whose next bytes do not come within this: a client that sends part of one and stalls holds up to the
# upload limit in memory (100 stalled 9 MB bodies held 1.1 GB), so it is answered 408 and its bytes freed; a slow but
# steady upload (10 MB at 1 Mbit/s takes 84 s) goes on as long as it keeps sending
BODY_SECONDS = 30.0
# connections and requests uvicorn serves at once; beyond it new ones get 503 (each may hold an upload being read)
CONNECTIONS = 256
NO_FACE = "no face found"
RAW_TYPES = ("application/octet-stream",)
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
DATA_URL = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),")


class RequestError(Exception):
    """A client mistake with its HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MB"


def _flag(value: str | None, name: str, default: bool) -> bool:
    if value is None:
        return default
    v = value.strip().lower()
    if v in TRUE or v in FALSE:
        return v in TRUE
    raise RequestError(422, f"{name} must be true or false, got {value[:40]!r}")


def _media_type(header: str) -> tuple[str, dict[str, str]]:
    """'multipart/form-data; boundary=x' → ('multipart/form-data', {'boundary': 'x'})."""
    from python_multipart.multipart import parse_options_header

    mt, params = parse_options_header(header)
    return mt.decode("latin-1").lower(), {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()}


def _is_image_type(media_type: str) -> bool:
    return media_type.startswith("image/") or media_type in RAW_TYPES


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as Content-Length or the bytes actually received exceed limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise RequestError(400, f"invalid Content-Length header {declared[:40]!r}") from None
        if n > limit:
            raise RequestError(413, f"request body is {n:,} bytes, over the {_mb(limit)} upload limit")
    buf = bytearray()
    chunks = request.stream().__aiter__()
    try:
        while True:
            with anyio.fail_after(BODY_SECONDS):  # for each next part of the body, not the whole
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
            buf += chunk
            if len(buf) > limit:
                raise RequestError(413, f"request body is over the {_mb(limit)} upload limit")
    except ClientDisconnect:
        raise RequestError(400, "client disconnected before the body was complete") from None
    except TimeoutError:
        raise RequestError(408, f"the request body stopped arriving: no bytes for {BODY_SECONDS:.0f} s "
                                f"({len(buf):,} bytes came)") from None
    return bytes(buf)


def parse_multipart(body: bytes, boundary: str) -> dict[str, tuple[str, bytes]]:
    """In-memory multipart/form-data → {field name: (media type, bytes)}; the first part of each name wins.

    Nothing is written to disk and client file names are ignored.
    """
    from python_multipart.multipart import MultipartParser

    parts: list[dict[str, Any]] = []
    field, value = bytearray(), bytearray()

    def part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise RequestError(422, f"too many multipart parts (at most {MAX_PARTS})")
        parts.append({"headers": {}, "data": bytearray()})

    def header_end() -> None:
        parts[-1]["headers"][bytes(field).decode("latin-1").lower()] = bytes(value).decode("latin-1")
        field.clear()
        value.clear()

    callbacks = {
        "on_part_begin": part_begin,
        "on_part_data": lambda d, s, e: parts[-1]["data"].extend(d[s:e]),
        "on_header_field": lambda d, s, e: field.extend(d[s:e]),
        "on_header_value": lambda d, s, e: value.extend(d[s:e]),
        "on_header_end": header_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except RequestError:
        raise
    except Exception as e:  # the parser's own errors: malformed framing, headers too long, ...
        raise RequestError(422, f"malformed multipart/form-data body ({type(e).__name__})") from None
    out: dict[str, tuple[str, bytes]] = {}
    for p in parts:
        _, disp = _media_type(p["headers"].get("content-disposition", ""))
        name = disp.get("name")
        if name and name not in out:
            mt, _ = _media_type(p["headers"].get("content-type", ""))
            out[name] = (mt, bytes(p["data"]))
    return out


def decode_base64_image(text: Any) -> bytes:
    """Base64 text, optionally a `data:image/...;base64,` URL → bytes (422 when not valid base64)."""
    if not isinstance(text, str):
        raise RequestError(422, 'JSON field "image" must be a base64 string')
    m = DATA_URL.match(text)
    if m:
        media, params = m.group(1).lower(), m.group(2).lower()
        if media and not _is_image_type(media):
            raise RequestError(415, f"data URL is {media}, not an image")
        if ";base64" not in params:
            raise RequestError(422, "data URL must be base64-encoded (data:image/...;base64,...)")
        text = text[m.end():]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, 'JSON field "image" is not valid base64') from None


def extract_image(media_type: str, params: dict[str, str], body: bytes, query_detect: str | None) -> tuple[bytes, bool]:
    """(encoded image bytes, detect flag) from a multipart, JSON or raw image body."""
    detect = _flag(query_detect, "detect", True)
    if media_type == "multipart/form-data":
        if not params.get("boundary"):
            raise RequestError(422, "multipart/form-data body without a boundary parameter")
        fields = parse_multipart(body, params["boundary"])
        if "file" not in fields:
            raise RequestError(422, 'missing form field "file" (the image to analyse)')
        part_type, data = fields["file"]
        if part_type and not _is_image_type(part_type):
            raise RequestError(415, f'form field "file" is {part_type}, not an image')
        if "detect" in fields:
            detect = _flag(fields["detect"][1].decode("latin-1"), "detect", detect)
        return data, detect
    if media_type == "application/json":
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: arrays nested beyond reason
            raise RequestError(422, "body is not valid JSON") from None
        if not isinstance(obj, dict) or "image" not in obj:
            raise RequestError(422, 'JSON body must be an object with an "image" field (base64)')
        if "detect" in obj:
            d = obj["detect"]
            detect = d if isinstance(d, bool) else _flag(str(d), "detect", detect)
        return decode_base64_image(obj["image"]), detect
    check_media_type(media_type)
    return body, detect


def check_media_type(media_type: str) -> None:
    """415 unless the request body is multipart/form-data, application/json or an image."""
    if media_type in ("multipart/form-data", "application/json") or _is_image_type(media_type):
        return
    raise RequestError(415, f"unsupported content type {media_type or '(none)'!r}: send multipart/form-data with "
                            'field "file", application/json {"image": base64} or an image/* body')


class Service:
    """The estimator (loaded once, lazily) and the locks around it."""

    def __init__(self, estimator: Any | None, max_upload_bytes: int, max_pixels: int,
                 max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        if max_upload_bytes < 1 or max_pixels < 4 or max_queue < 0:
            raise AgelensError(f"limits must be positive (max_upload_bytes={max_upload_bytes}, max_pixels={max_pixels}, "
                               f"max_queue={max_queue})")
        self._estimator = estimator
        self.max_upload_bytes, self.max_pixels, self.max_queue = max_upload_bytes, max_pixels, max_queue
        self.pending = 0  # requests waiting for the models or being answered (the event loop's count: one thread)
        self.waiting_pixels = 0  # their decoded pixels (WAIT_PIXELS)
        self._load_lock = threading.Lock()
        self.model_lock = threading.Lock()  # mediapipe graphs and the torch models: one image at a time
        self.model_limiter = anyio.CapacityLimiter(1)  # queue in the event loop, not in blocked threads
        self.decode_limiter = anyio.CapacityLimiter(2)  # bounds decoded-pixel memory

    @property
    def estimator(self) -> Any:
        if self._estimator is None:
            with self._load_lock:
                if self._estimator is None:
                    from ..inference.predictor import AgeEstimator

                    t = time.perf_counter()
                    self._estimator = AgeEstimator.from_pretrained()
                    log.info("models loaded in %.1f s", time.perf_counter() - t)
        return self._estimator

    def warm_up(self) -> None:
        """Load the models and build the detector graphs so the first request is not slow."""
        try:
            self.infer(np.full((64, 64, 3), 128, np.uint8), True)
        except Exception as e:  # warm-up is best effort; requests report their own errors
            log.warning("warm-up failed: %s", e)

    def models(self) -> dict[str, str | None]:
        est = self.estimator
        student, detector = getattr(est, "student", None), getattr(est, "detector", None)
        return {"teacher": getattr(est, "name", None), "student": getattr(student, "name", None),
                "occlusion_detector": getattr(detector, "name", None), "route": getattr(est, "route", None),
                "backend": getattr(est, "backend", None)}

    def infer(self, rgb: np.ndarray, detect: bool) -> tuple[list[dict], str | None, float, dict]:
        """(face dicts, message, time the model was free, {"detect_ms", "model_ms"}): the message says when no face
        was found, and then the whole search counts as detection."""
        with self.model_lock:
            started = time.perf_counter()
            try:
                faces = [p.to_dict() for p in self.estimator.predict(rgb, detect=detect)]
            except NoFaceError:
                return [], NO_FACE, started, {"detect_ms": 1000 * (time.perf_counter() - started), "model_ms": 0.0}
            return faces, None, started, faces[0].get("timing", {}) if faces else {}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def _busy(svc: Service) -> JSONResponse:
    return JSONResponse({"detail": f"busy: {svc.pending} requests are waiting for the models; try again shortly"},
                        status_code=503, headers={"Retry-After": "1"})


def create_app(estimator: Any | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_queue: int = DEFAULT_MAX_QUEUE,
               allow_origins: list[str] | None = None) -> FastAPI:
    """The FastAPI app. estimator: an AgeEstimator (or anything with its `predict`); None loads the shipped
    models once at startup (or on the first request when the app runs without its lifespan). max_queue: requests
    that may wait for the models (503 beyond it); a request whose client has gone is dropped when its turn comes.
    allow_origins: web pages of these origins (scheme://host[:port], or "*") may call the API from a browser
    (CORS, preflight included); none by default, so a page elsewhere cannot read the answers."""
    svc = Service(estimator, max_upload_bytes, max_pixels, max_queue)
    page = (resources.files("agelens") / "serve" / "static" / "index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(svc.warm_up)
        yield

    app = FastAPI(title="agelens", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = svc
    if allow_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(allow_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"], expose_headers=["Retry-After"], max_age=600)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        return _error(500, "internal error (logged on the server)")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                       "style-src 'unsafe-inline'; script-src 'unsafe-inline'",
            "X-Content-Type-Options": "nosniff"})

    @app.get("/healthz")
    async def healthz() -> dict:
        models = await anyio.to_thread.run_sync(svc.models)
        return {"status": "ok", "models": models,
                "limits": {"max_upload_bytes": svc.max_upload_bytes, "max_pixels": svc.max_pixels,
                           "max_queue": svc.max_queue}, "pending": svc.pending}

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        """Ages of every face in an image: multipart field `file`, JSON {"image": base64} or an image/* body.
        Query (or form/JSON field) `detect=false` treats the image as an aligned face crop."""
        t0 = time.perf_counter()
        if svc.pending > svc.max_queue:  # no room: said before the body is read or decoded
            return _busy(svc)
        try:
            media_type, params = _media_type(request.headers.get("content-type", ""))
            check_media_type(media_type)  # 415 before the body is read
            body = await read_body(request, svc.max_upload_bytes)
            # in a thread: parsing a large JSON or multipart body must not hold up other requests (/healthz)
            data, detect = await anyio.to_thread.run_sync(extract_image, media_type, params, body,
                                                          request.query_params.get("detect"))
            del body
            t1 = time.perf_counter()
            rgb, scale = await anyio.to_thread.run_sync(decode_reduced, data, FACE_MIN_SIDE, svc.max_pixels,
                                                        "upload", limiter=svc.decode_limiter)
            del data
        except RequestError as e:
            return _error(e.status, e.message)
        except ImageTooLargeError as e:
            return _error(413, str(e))
        except ImageError as e:
            return _error(422, str(e))
        t2 = time.perf_counter()
        pixels = rgb.shape[0] * rgb.shape[1]
        # one answered, max_queue waiting, or the waiting images' pixels over their budget: no room
        if svc.pending > svc.max_queue or (svc.pending and svc.waiting_pixels + pixels > WAIT_PIXELS):
            return _busy(svc)
        svc.pending += 1
        svc.waiting_pixels += pixels
        try:
            async with svc.model_limiter:
                if await request.is_disconnected():  # its client gave up while it waited: nobody to answer
                    return _error(499, "the client closed the request before its turn")
                faces, message, started, timing = await anyio.to_thread.run_sync(svc.infer, rgb, detect)
        except AgelensError as e:
            return _error(422, str(e))
        except Exception:
            log.exception("estimator failed on a %dx%d image", rgb.shape[1], rgb.shape[0])
            return _error(500, "internal error while estimating ages (logged on the server)")
        finally:
            svc.pending -= 1
            svc.waiting_pixels -= pixels
        t3 = time.perf_counter()
        if scale != 1.0:  # boxes from the reduced decode, in the upload's pixels
            faces = [{**f, "box": file_box(f["box"], scale)} for f in faces]
        timings = {"read_ms": 1000 * (t1 - t0), "decode_ms": 1000 * (t2 - t1), "queue_ms": 1000 * (started - t2),
                   "detect_ms": timing.get("detect_ms"), "model_ms": timing.get("model_ms"),
                   "total_ms": 1000 * (t3 - t0)}
        return JSONResponse({
            "faces": faces, "message": message,
            "image": {"width": round(rgb.shape[1] * scale), "height": round(rgb.shape[0] * scale)},
            "timings": {k: (round(v, 1) if isinstance(v, float) else v) for k, v in timings.items()},
        })

    return app


def _version() -> str:
    from .. import __version__

    return __version__
