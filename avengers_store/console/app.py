"""The console's routes, mounted at ``/console`` by the gateway (``avengers serve``) or served
alone (``avengers console``, ``create_app``). Every page is read-only; with auth on, a page
without a live key redirects to the login form."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from urllib.parse import parse_qs, quote

import psycopg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from avengers_store.async_client import AsyncAvengersClient
from avengers_store.console import access, pages
from avengers_store.errors import AvengersError

log = logging.getLogger("avengers.console")

PREFIX = "/console"
Handler = Callable[[Request, psycopg.AsyncConnection], Awaitable[Response]]


def _safe_next(value: str | None) -> str:
    """Where to go after logging in: a console path only (never another site)."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//"):
        return value
    return PREFIX + "/"


def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """One read connection per page; with auth on, the page needs a live key."""

    async def endpoint(request: Request) -> Response:
        state: access.ConsoleState = request.app.state.console
        try:
            async with state.connection() as conn:
                if state.auth:
                    key = access.presented_key(request.headers, request.cookies)
                    if await access.reader(conn, key) is None:
                        target = request.url.path + (
                            f"?{request.url.query}" if request.url.query else ""
                        )
                        return RedirectResponse(
                            f"{PREFIX}/login?next={quote(target)}", status_code=303
                        )
                return await handler(request, conn)
        except AvengersError as exc:
            log.warning("console page %s: %s", request.url.path, exc)
            return pages.render("unavailable.html", 503, page="", message=str(exc))

    return endpoint


async def login_form(request: Request) -> Response:
    return pages.render(
        "login.html",
        page="login",
        next=_safe_next(request.query_params.get("next")),
        failed=False,
    )


async def login(request: Request) -> Response:
    state: access.ConsoleState = request.app.state.console
    body = (await request.body())[:8192].decode("utf-8", "replace")
    form = {k: v[0] for k, v in parse_qs(body).items()}
    key, target = form.get("key", "").strip(), _safe_next(form.get("next"))
    async with state.connection() as conn:
        name = await access.reader(conn, key)
    if name is None:
        return pages.render("login.html", 401, page="login", next=target, failed=True)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        access.COOKIE,
        key,
        max_age=access.COOKIE_MAX_AGE,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(access.COOKIE, path=PREFIX)
    return response


def routes() -> list[BaseRoute]:
    """The console's routes, to mount at ``/console``; the app's ``state.console`` is a
    ``ConsoleState``."""
    static = resources.files("avengers_store.console") / "static"
    return [
        Mount(
            PREFIX,
            routes=[
                Route("/", guarded(pages.overview)),
                Route("/profiles", guarded(pages.profiles)),
                Route("/profiles/{cluster:int}", guarded(pages.cluster)),
                Route("/requests", guarded(pages.requests)),
                Route("/requests/{route_id}", guarded(pages.request_page)),
                Route("/costs", guarded(pages.costs)),
                Route("/drift", guarded(pages.drift)),
                Route("/shadow", guarded(pages.shadow)),
                Route("/login", login_form, methods=["GET"]),
                Route("/login", login, methods=["POST"]),
                Route("/logout", logout),
                Mount("/static", StaticFiles(directory=str(static)), name="console-static"),
            ],
        ),
        Route(PREFIX, lambda request: RedirectResponse(PREFIX + "/", status_code=307)),
    ]


def create_app(
    url: str | None = None, *, auth: bool = True, client: AsyncAvengersClient | None = None
) -> Starlette:
    """The console alone, over the store at ``url`` (``avengers console``)."""
    client = client or AsyncAvengersClient(url, pool_size=4)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    app = Starlette(
        routes=[*routes(), Route("/", lambda r: RedirectResponse(PREFIX + "/", status_code=307))],
        lifespan=lifespan,
    )
    app.state.console = access.ConsoleState(lambda: client.connection("read"), auth)
    return app
