"""The dashboard's FastAPI application and how it is served.

Pages (``/`` live, ``/localize``, ``/dataset``, ``/model``) are static HTML from this
package that fetch JSON from ``/api/...`` and draw it; the live page also opens the
WebSocket ``/ws/live``, on which every pose is pushed as it arrives.

Access: bound to a loopback address (the default) the dashboard answers only requests whose
``Host`` is a loopback name (so a web page elsewhere cannot reach it through DNS
rebinding) and WebSockets from its own origin. Bound to any other address it needs an access
token (:func:`access_token` makes one when none is given): as ``?token=`` (which also sets a
cookie, so the page's own requests carry it), an ``Authorization: Bearer`` header or that
cookie, on HTTP and on the WebSocket.

Errors a user can cause (a bad upload, a missing checkpoint, a dataset without a report)
answer with a JSON ``{"error": "..."}`` and an HTTP status; the server keeps running.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TypeVar, cast
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from camera_pose_ros.dashboard.localize import (
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_PIXELS,
    LocalizeService,
    UploadError,
    check_upload_name,
    decode_upload,
    read_frame,
)
from camera_pose_ros.dashboard.sources import (
    SPLITS,
    DashboardSources,
    dataset_summary,
    find_sources,
    floorplan_meta,
    model_summary,
)
from camera_pose_ros.dashboard.state import LiveState
from camera_pose_ros.errors import CameraPoseError, CheckpointError, ConfigError, InputDataError
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.posecsv import PoseTable, read_poses

__all__ = ["create_app", "run_dashboard", "access_token", "is_loopback", "check_port",
           "make_server", "STATIC", "TOKEN_COOKIE"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": "live.html", "/localize": "localize.html", "/dataset": "dataset.html",
         "/model": "model.html"}
TOKEN_COOKIE = "camera_pose_dashboard_token"
FRAME_PREVIEW_WIDTH = 480


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def access_token(host: str, token: str | None) -> str | None:
    """The token the server will require: ``token`` as given; a new random one when the
    address is not loopback and none was given; None (no token) on loopback without one."""
    if token:
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(24)


def check_port(host: str, port: int) -> None:
    """Raise a one-line :class:`ConfigError` when ``host:port`` cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), int(port)))
        except OSError as exc:
            raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror or exc} (another "
                              "dashboard there? choose another port)") from exc


def _host_name(host_header: str) -> str:
    """Host part of a ``Host`` header (``[::1]:8080`` -> ``::1``)."""
    h = host_header.strip()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _json_safe(value: object) -> object:
    """Non-finite floats become None (JSON has no NaN), numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _ok(data: object, status: int = 200) -> JSONResponse:
    return JSONResponse(_json_safe(data), status_code=status)


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


Send = Callable[[dict], Awaitable[None]]


class _AccessControl:
    """ASGI middleware: loopback Host and same-origin WebSocket checks, and the token."""

    def __init__(self, app: Callable, *, token: str | None, loopback_only: bool) -> None:
        self.app, self.token, self.loopback_only = app, token, loopback_only

    async def __call__(self, scope: dict, receive: Callable, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self.loopback_only and self.token is None and host and not is_loopback(
                _host_name(host)):
            await self._deny(kind, receive, send, 400,
                             f"this dashboard answers only on a loopback address, not "
                             f"{host!r}: open it as http://localhost:PORT/")
            return
        origin = headers.get("origin")
        if kind == "websocket" and origin and urlsplit(origin).netloc.lower() != host.lower():
            await self._deny(kind, receive, send, 403, f"WebSocket from another origin "
                             f"({origin}) refused")
            return
        set_cookie = False
        if self.token is not None:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [""])[0]
            from_query = bool(given)
            if not given and headers.get("authorization", "").lower().startswith("bearer "):
                given = headers["authorization"][7:].strip()
            if not given and "cookie" in headers:
                jar = SimpleCookie()
                try:
                    jar.load(headers["cookie"])
                except Exception:  # a malformed Cookie header is no token
                    jar = SimpleCookie()
                if TOKEN_COOKIE in jar:
                    given = jar[TOKEN_COOKIE].value
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                await self._deny(kind, receive, send, 401,
                                 "this dashboard needs its access token: open the address "
                                 "it printed at start (ending in ?token=...)")
                return
            set_cookie = from_query and kind == "http"
        if not set_cookie:
            await self.app(scope, receive, send)
            return
        cookie = (f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                  ).encode("latin-1")

        async def send_with_cookie(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie)]
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    @staticmethod
    async def _deny(kind: str, receive: Callable, send: Send, status: int, text: str) -> None:
        if kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": text[:120]})
            return
        body = json.dumps({"error": text}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _Cache:
    """Summaries recomputed only when the files they come from change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[tuple, object]] = {}

    def get(self, key: str, files: list[Path], make: Callable[[], _T]) -> _T:
        stamp = tuple((str(f), f.stat().st_mtime_ns if f.exists() else None) for f in files)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] == stamp:
                return cast(_T, hit[1])  # one key, one kind of value
        value = make()
        with self._lock:
            self._items[key] = (stamp, value)
        return value


def create_app(sources: DashboardSources, live: LiveState | None = None, *,
               token: str | None = None, loopback_only: bool = True,
               max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_upload_pixels: int = MAX_UPLOAD_PIXELS, device: str = "cpu",
               mc_samples: int | None = None, refine_config: str | Path | None = None,
               warm_up: bool = False) -> FastAPI:
    """The dashboard application.

    Args:
        sources: checkpoint, dataset, floor plan and evaluations (see ``find_sources``).
        live: what the live page shows; default an empty one with no robot (``offline``).
        token: access token every request must carry (None: none needed).
        loopback_only: refuse a ``Host`` that is not a loopback name (when no token).
        max_upload_bytes: largest upload accepted.
        max_upload_pixels: largest image (by its header) accepted.
        device: torch device for localization.
        mc_samples: covariance samples (default: the checkpoint's).
        refine_config: YAML of refinement settings.
        warm_up: load the model in a background thread at start.
    """
    live = live if live is not None else LiveState(None)
    cache = _Cache()
    plan: FloorPlan | None = None
    plan_problem: str | None = None
    if sources.floorplan is not None:
        try:
            plan = FloorPlan.load(sources.floorplan)
        except InputDataError as exc:
            plan_problem = str(exc)
    elif sources.data is not None:
        plan_problem = (f"no floor plan: none given (--floorplan) and none at "
                        f"{sources.data / 'floorplan.yaml'}")
    else:
        plan_problem = "no floor plan given (--floorplan floor.yaml)"
    service = LocalizeService(sources.checkpoint, refinement_map=sources.refinement_map,
                              refine_config=refine_config, device=device,
                              mc_samples=mc_samples, floorplan=plan)
    plan_png: bytes | None = None
    if plan is not None:
        ok, buf = cv2.imencode(".png", plan.to_image())
        plan_png = buf.tobytes() if ok else None
    provenance = (sources.checkpoint_meta or {}).get("provenance") or {}

    app = FastAPI(title="camera_pose_ros dashboard", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.live = live
    app.state.sources = sources
    app.state.service = service
    app.add_middleware(_AccessControl, token=token, loopback_only=loopback_only)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return _error(str(exc), exc.status)

    @app.exception_handler(CheckpointError)
    async def _no_model(request: Request, exc: CheckpointError) -> JSONResponse:
        return _error(str(exc), 409)  # the server has no usable model: not the client's fault

    @app.exception_handler(CameraPoseError)
    async def _user_error(request: Request, exc: CameraPoseError) -> JSONResponse:
        return _error(str(exc), 400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("dashboard: %s %s failed", request.method, request.url.path)
        return _error(f"internal error ({type(exc).__name__}: {exc}); the dashboard keeps "
                      "running, see its log", 500)

    def page_route(page: str) -> Callable[[], FileResponse]:
        def serve_page() -> FileResponse:  # no parameters: nothing from the request
            return FileResponse(STATIC / page, media_type="text/html",
                                headers={"cache-control": "no-cache"})

        return serve_page

    for route, page in PAGES.items():
        app.add_api_route(route, page_route(page), methods=["GET"], include_in_schema=False)

    @app.get("/api/info")
    def info() -> JSONResponse:
        problems = list(sources.problems)
        if plan_problem:
            problems.append(plan_problem)
        modes = service.modes(provenance)
        if sources.checkpoint is None:
            problems.append("no checkpoint: localization needs --checkpoint RUN/model.pt")
        elif not modes:
            problems.append(f"checkpoint not found: {sources.checkpoint}")
        return _ok({"sources": sources.describe(), "problems": problems,
                    "modes": modes, "floorplan": plan is not None,
                    "live_source": live.source, "token_required": token is not None,
                    "max_upload_bytes": max_upload_bytes,
                    "max_upload_pixels": max_upload_pixels,
                    "splits": _splits()})

    def _splits() -> list[str]:
        if sources.data is None:
            return []
        return [s for s in SPLITS if (sources.data / f"{s}.csv").is_file()]

    @app.get("/api/floorplan")
    def floorplan() -> JSONResponse:
        if plan is None:
            return _error(plan_problem or "no floor plan", 404)
        return _ok(floorplan_meta(plan))

    @app.get("/api/floorplan.png")
    def floorplan_png() -> Response:
        if plan_png is None:
            return _error(plan_problem or "no floor plan", 404)
        return Response(plan_png, media_type="image/png",
                        headers={"cache-control": "max-age=300"})

    @app.get("/api/live")
    def live_snapshot() -> JSONResponse:
        return _ok(live.snapshot())

    @app.get("/api/live/image.jpg")
    def live_image() -> Response:
        img = live.image()
        if img is None:
            return _error("no camera image received yet", 404)
        return Response(img[0], media_type="image/jpeg", headers={"cache-control": "no-store"})

    @app.websocket("/ws/live")
    async def live_ws(ws: WebSocket) -> None:
        await ws.accept()
        queue = live.subscribe(asyncio.get_running_loop())
        try:
            await ws.send_text(json.dumps(_json_safe(live.snapshot())))
            while True:
                try:
                    text = await asyncio.wait_for(queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    text = json.dumps(_json_safe({"type": "status",
                                                  "status": live.status()}))
                await ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the page went away
        finally:
            live.unsubscribe(queue)

    @app.get("/api/dataset")
    async def dataset() -> JSONResponse:
        if sources.data is None:
            return _error("no dataset: start the dashboard with --data DATA, or a checkpoint "
                          "whose provenance names its dataset", 404)
        data = sources.data
        files = [data / "report.json", data / "poses.csv", data / "alignment.json"]
        summary = await run_in_threadpool(
            cache.get, "dataset", files, lambda: dataset_summary(data, plan))
        return _ok(summary)

    @app.get("/api/model")
    async def model() -> JSONResponse:
        files = [p for p in [sources.checkpoint, *sources.evaluations] if p is not None]
        summary = await run_in_threadpool(
            cache.get, "model", files, lambda: model_summary(sources))
        summary = dict(summary)
        summary["modes"] = service.modes(provenance)
        return _ok(summary)

    def _split_table(split: str) -> tuple[Path, PoseTable]:
        """The dataset folder and the poses of one of its splits."""
        if split not in SPLITS:
            raise UploadError(f"unknown split {split!r}: one of {', '.join(SPLITS)}", 404)
        data = sources.data
        if data is None or not (data / f"{split}.csv").is_file():
            raise UploadError(f"no {split} split: give the dataset with --data", 404)
        return data, cache.get(f"split-{split}", [data / f"{split}.csv"],
                               lambda: read_poses(data / f"{split}.csv"))

    @app.get("/api/frames/{split}")
    def frames(split: str) -> JSONResponse:
        _, table = _split_table(split)
        images = table.images or []
        return _ok({"split": split, "frames": [
            {"index": i, "name": name, "stamp": int(table.stamps_ns[i]) / 1e9,
             "x": float(table.positions_N3[i, 0]), "y": float(table.positions_N3[i, 1])}
            for i, name in enumerate(images)]})

    def _frame(split: str, index: int) -> tuple[np.ndarray, PoseTable, int]:
        data, table = _split_table(split)
        if not table.images or not 0 <= index < len(table.images):
            raise UploadError(f"no frame {index} in the {split} split "
                              f"({len(table.images or [])} frames)", 404)
        return read_frame(data, table.images[index]), table, index

    @app.get("/api/frames/{split}/{index}.jpg")
    def frame_image(split: str, index: int) -> Response:
        rgb, _, _ = _frame(split, index)
        h, w = rgb.shape[:2]
        if w > FRAME_PREVIEW_WIDTH:
            rgb = cv2.resize(rgb, (FRAME_PREVIEW_WIDTH, round(h * FRAME_PREVIEW_WIDTH / w)),
                             interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
        return Response(buf.tobytes(), media_type="image/jpeg")

    @app.post("/api/localize/frame")
    async def localize_frame(split: str = "test", index: int = 0) -> JSONResponse:
        rgb, table, i = await run_in_threadpool(_frame, split, index)
        gt = (table.positions_N3[i], table.quats_wxyz_N4[i])
        t0 = time.perf_counter()
        result = await run_in_threadpool(service.localize, rgb, gt)
        result.update(name=(table.images or [])[i], split=split, index=i,
                      total_ms=1000 * (time.perf_counter() - t0))
        return _ok(result)

    @app.post("/api/localize")
    async def localize_upload(request: Request, name: str | None = None) -> JSONResponse:
        display = check_upload_name(name)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload_bytes:
            raise UploadError(f"the upload has {int(length)} bytes, more than the limit of "
                              f"{max_upload_bytes} bytes ({max_upload_bytes / 2**20:.0f} "
                              "MiB)", 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_upload_bytes:
                raise UploadError(f"the upload is larger than the limit of "
                                  f"{max_upload_bytes} bytes "
                                  f"({max_upload_bytes / 2**20:.0f} MiB)", 413)
        if request.headers.get("content-type", "").startswith("multipart/"):
            raise UploadError("send the image bytes as the request body, not as a form "
                              "(e.g. curl --data-binary @photo.jpg)", 415)
        t0 = time.perf_counter()
        rgb = await run_in_threadpool(decode_upload, bytes(body), max_bytes=max_upload_bytes,
                                      max_pixels=max_upload_pixels)
        decode_ms = 1000 * (time.perf_counter() - t0)
        result = await run_in_threadpool(service.localize, rgb)
        result.update(name=display, bytes=len(body), decode_ms=decode_ms,
                      total_ms=1000 * (time.perf_counter() - t0))
        return _ok(result)

    if warm_up and sources.checkpoint_meta is not None:
        threading.Thread(target=service.warm_up, name="dashboard-warm-up",
                         daemon=True).start()
    return app


def make_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8080, *,
                log_level: str = "warning"):  # -> uvicorn.Server
    """A uvicorn server for ``app`` (``server.run()`` serves until SIGINT/SIGTERM, or until
    ``server.should_exit`` is set from another thread)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            ws="websockets-sansio", lifespan="off", access_log=False,
                            ws_ping_interval=20.0, timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


def run_dashboard(*, checkpoint: str | Path | None = None, data: str | Path | None = None,
                  floorplan: str | Path | None = None, evaluations: tuple | list = (),
                  refinement_map: str | Path | None = None,
                  refine_config: str | Path | None = None, host: str = "127.0.0.1",
                  port: int = 8080, token: str | None = None, device: str = "cpu",
                  max_upload_mb: float = MAX_UPLOAD_BYTES / 2**20) -> str:
    """``camera-pose dashboard``: the offline pages and image upload, until Ctrl-C.

    Inputs given explicitly must exist (a one-line error otherwise); what is not given is
    found from the checkpoint's provenance. Returns the address it served on.

    Raises:
        CameraPoseError: an explicit input is missing or unreadable, or the port is taken.
    """
    if not (checkpoint or data or floorplan or evaluations):
        raise ConfigError("nothing to show: give --checkpoint, --data and/or --floorplan")
    if max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    sources = find_sources(checkpoint, data, floorplan, list(evaluations), refinement_map,
                           strict=True)
    for problem in sources.problems:
        log.warning("%s", problem)
    required = access_token(host, token)
    check_port(host, port)
    app = create_app(sources, None, token=required, device=device,
                     max_upload_bytes=int(max_upload_mb * 2**20), refine_config=refine_config,
                     warm_up=True)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    if required and not token:
        log.warning("serving on %s, which other machines can reach: open %s?token=%s "
                    "(a new token each start; give --token to keep one)", host, url, required)
    else:
        log.info("dashboard on %s (Ctrl-C stops it)", url)
    make_server(app, host, port).run()
    log.info("dashboard stopped")
    return url
