"""The dashboard's web side: a Starlette app served by uvicorn.

Pages are static files (``static/``); the live parts come as server-sent events:
``/api/stream`` pushes what the overview page shows (counters, charts, the current
page of workers and of jobs for its filters) whenever the state changed, at most
every :data:`MIN_PUSH` seconds; ``/api/job/ID/stream`` pushes a job's detail and
its output as it arrives.  Actions are POSTs, refused unless ``--actions``.

Security: with a token (``--token-file``), every request needs the session cookie,
which ``/?token=TOKEN`` sets (then redirects to a URL without it); POSTs also need the
CSRF token the page reads from ``/api/session`` (same-origin only) in a header, and an
Origin, if sent, of this very site.  Without a token (loopback only), requests must
name a loopback Host (no DNS rebinding).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import protocol as p
from .link import Link
from .mirror import Mirror

STATIC = Path(__file__).parent / "static"
#: Least seconds between two pushes on one event stream.
MIN_PUSH = 0.4
#: A comment line on idle streams this often (keeps proxies and the browser's connection alive).
KEEPALIVE = 15.0
#: Seconds between two pushes of the charts while no interval closes.
CHARTS_EVERY = 1.0
COOKIE = "jobqueue_dashboard"
PAGE_SIZE = 50
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


class Notifier:
    """Wakes the event streams when the mirror changed (called from the link thread)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._pending = False

    def notify(self) -> None:
        if self.loop is not None and not self._pending:
            self._pending = True
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._pending = False
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, timeout: float) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        if self._event is None:
            self._event = asyncio.Event()
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass


class Auth:
    """The token, the session cookie derived from it, and the CSRF token."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.cookie = self._derive("session") if token else ""
        self.csrf = self._derive("csrf") if token else ""

    def _derive(self, what: str) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), what.encode(), hashlib.sha256).hexdigest()

    def has_cookie(self, headers: dict[str, str]) -> bool:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:
            return False
        morsel = jar.get(COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value, self.cookie)


class Guard:
    """ASGI middleware: the token and cookie, and the Host check of a token-less dashboard."""

    def __init__(self, app: ASGIApp, auth: Auth, loopback: bool) -> None:
        self.app, self.auth, self.loopback = app, auth, loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").rsplit(":", 1)[0] if not headers.get("host", "").endswith("]") \
            else headers.get("host", "")
        if self.auth.token is None:
            if self.loopback and host not in LOOPBACK_HOSTS:
                await PlainTextResponse("this dashboard answers only to a loopback host name", 403)(
                    scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = query.get("token", [""])[0]
        if given:
            if not hmac.compare_digest(given.encode(), self.auth.token.encode()):
                await PlainTextResponse("wrong token", 403)(scope, receive, send)
                return
            response = Response(status_code=303, headers={"location": scope["path"]})
            response.set_cookie(COOKIE, self.auth.cookie, httponly=True, samesite="strict", path="/")
            await response(scope, receive, send)
            return
        if not self.auth.has_cookie(headers):
            await PlainTextResponse("this dashboard needs its token: open the URL it printed when it started "
                                    "(http://HOST:PORT/?token=...), or read the token from its --token-file",
                                    401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(mirror: Mirror, link: Link | None, notifier: Notifier, *, token: str | None = None,
              actions: bool = False, loopback: bool = True) -> ASGIApp:
    auth = Auth(token)

    def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    def job_page(request: Request) -> Response:
        return FileResponse(STATIC / "job.html")

    def session(request: Request) -> Response:
        return JSONResponse({"actions": actions, "csrf": auth.csrf, "token": token is not None})

    async def stream(request: Request) -> Response:
        q = request.query_params
        jobs_args: dict[str, Any] = {"state": q.get("state", ""), "tag": q.get("tag", ""),
                                     "worker": q.get("worker", ""), "text": q.get("q", ""),
                                     "page": _int(q.get("page")), "size": PAGE_SIZE}
        workers_args: dict[str, Any] = {"text": q.get("wq", ""), "page": _int(q.get("wpage")), "size": PAGE_SIZE}

        async def events() -> AsyncIterator[str]:
            seen = seen_series = charts_of = -1
            charts_at = 0.0
            while True:
                data: dict[str, Any] = {}
                with mirror.lock:
                    if mirror.version != seen:
                        seen = mirror.version
                        data = {"overview": mirror.overview(), "workers": mirror.workers_page(**workers_args),
                                "jobs": mirror.jobs_page(**jobs_args)}
                    # the charts (a few KiB) when a point closed, else at most every CHARTS_EVERY while
                    # things change (the open interval's point moves)
                    due = time.monotonic() - charts_at >= CHARTS_EVERY
                    if mirror.series_version != seen_series or (due and charts_of != mirror.version):
                        seen_series, charts_of, charts_at = mirror.series_version, mirror.version, time.monotonic()
                        data["charts"] = mirror.chart_data()
                    charts_pending = charts_of != mirror.version
                yield _sse(data) if data else ": keep-alive\n\n"
                started = time.monotonic()
                await notifier.wait(CHARTS_EVERY if charts_pending else KEEPALIVE)
                await asyncio.sleep(max(0.0, MIN_PUSH - (time.monotonic() - started)))

        return _event_stream(events())

    async def job_stream(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if link is not None:
            link.follow(job_id)

        async def events() -> AsyncIterator[str]:
            seq = 0
            last: Any = None
            try:
                while True:
                    with mirror.lock:
                        buffer = mirror.tails.get(job_id)
                        row = mirror.job_row(job_id)
                        data: dict[str, Any] = {"now": mirror.now(), "connected": mirror.connected}
                        if row != last:
                            data["job"] = last = row
                        if buffer is not None:
                            data["detail"] = _detail(buffer.detail)
                            data["ended"] = buffer.ended
                            data["truncated"] = buffer.truncated
                            chunks = buffer.since(seq)
                            if chunks:
                                data["chunks"] = chunks
                                seq = chunks[-1]["seq"]
                    yield _sse(data)
                    started = time.monotonic()
                    await notifier.wait(KEEPALIVE)
                    await asyncio.sleep(max(0.0, MIN_PUSH / 2 - (time.monotonic() - started)))
            finally:
                if link is not None:
                    link.unfollow(job_id)

        return _event_stream(events())

    async def act(request: Request, message: p.CancelRequest | p.DrainRequest) -> Response:
        problem = _refuse_post(request, auth, actions)
        if problem:
            return JSONResponse({"error": problem}, 403)
        if link is None:
            return JSONResponse({"error": "not connected"}, 503)
        try:
            reply = await asyncio.get_running_loop().run_in_executor(None, link.request, message)
        except Exception as e:
            return JSONResponse({"error": f"the server did not do it: {e or 'no answer'}"}, 502)
        return JSONResponse({"done": reply.done, "unknown": reply.unknown}, 200 if reply.done else 404)

    async def cancel(request: Request) -> Response:
        return await act(request, p.CancelRequest(p.PROTOCOL_VERSION, [request.path_params["job_id"]], 15))

    async def drain(request: Request) -> Response:
        return await act(request, p.DrainRequest(p.PROTOCOL_VERSION, [request.path_params["name"]]))

    app = Starlette(routes=[
        Route("/", index),
        Route("/job/{job_id}", job_page),
        Route("/api/session", session),
        Route("/api/stream", stream),
        Route("/api/job/{job_id}/stream", job_stream),
        Route("/api/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/api/workers/{name:path}/drain", drain, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
    return Guard(app, auth, loopback)


def _refuse_post(request: Request, auth: Auth, actions: bool) -> str:
    """Why this action is refused ('' if allowed): actions off, or a cross-site request."""
    if not actions:
        return "actions are off: start the dashboard with --actions (and --token-file)"
    if not auth.token or not hmac.compare_digest(request.headers.get("x-csrf-token", ""), auth.csrf):
        return "missing or wrong CSRF token: reload the page"
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        return f"cross-site request from {origin} refused"
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return "cross-site request refused"
    return ""


def _detail(detail: p.JobDetail | None) -> dict[str, Any] | None:
    if detail is None:
        return None
    out: dict[str, Any] = {f: getattr(detail, f) for f in detail.__struct_fields__
                           if f not in ("timeline", "outcome")}
    out["timeline"] = [{"at": e.at, "what": e.what, "detail": e.detail} for e in detail.timeline]
    o = detail.outcome
    out["outcome"] = None if o is None else {"status": o.status, "reason": o.reason, "outcome": o.outcome,
                                             "started": o.started, "ended": o.ended}
    return out


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _event_stream(events: AsyncIterator[str]) -> Response:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0
