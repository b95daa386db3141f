"""The dashboard's web app: Starlette routes over one runs folder, served by uvicorn.

Both come with fastai (fastprogress → python-fasthtml → starlette, uvicorn), so the dashboard
adds no dependency. Every route is a GET: pages (HTML shells drawn by ``assets/dashboard.js``),
``/api/…`` (JSON read from the run folders on each request, so a run that is training shows
its new epochs at the next poll) and ``/files/…`` (files under the runs folder only: a path
with ``..``, an absolute path, a hidden name or a link leading outside is answered 404).
Nothing writes or deletes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from braver.dashboard import folders
from braver.dashboard.folders import clean
from braver.dashboard.pages import ASSETS, asset_text, page

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
NO_STORE = {"Cache-Control": "no-store"}


def inside(root: Path, relative: str) -> Path | None:
    """``root/relative`` when it names a file inside ``root``; None for anything else.

    Refused: empty or absolute paths, ``..``, backslashes, hidden names (temporary files of
    atomic writes, dot folders) and links that resolve outside ``root``.
    """
    if not relative or "\\" in relative or "\x00" in relative:
        return None
    posix = PurePosixPath(relative)
    if posix.is_absolute() or any(
        part in ("..", ".") or part.startswith(".") for part in posix.parts
    ):
        return None
    base = root.resolve()
    candidate = (base / posix).resolve()
    if not candidate.is_relative_to(base) or not candidate.is_file():
        return None
    return candidate


def run_folder(root: Path, name: str) -> Path:
    """The run folder ``name`` directly under ``root`` (404 otherwise)."""
    if "/" in name or inside(root, f"{name}/{folders.RUN_FILE}") is None:
        raise HTTPException(404, "no such run")
    return root / name


def study_file(root: Path, path: str) -> Path:
    """``path/transfer.json`` or ``path/prune.json`` under ``root`` (404 otherwise)."""
    for name in ("transfer.json", "prune.json"):
        found = inside(root, f"{path.strip('/')}/{name}")
        if found is not None:
            return root.resolve() / path.strip("/") / name
    raise HTTPException(404, "no such study")


def create_app(root: str | Path, allowed_hosts: Sequence[str] | None = None) -> Starlette:
    """The dashboard over ``root`` (a runs folder). ``allowed_hosts``: the Host headers
    accepted (a page on another site cannot then read the runs through DNS rebinding)."""
    root = Path(root)

    async def runs_page(request: Request) -> Response:
        return HTMLResponse(page("braver runs", "runs"))

    async def run_page(request: Request) -> Response:
        name = request.path_params["name"]
        run_folder(root, name)
        return HTMLResponse(page(f"braver · {name}", "run", run=name))

    async def compare_page(request: Request) -> Response:
        return HTMLResponse(page("braver · comparison", "compare"))

    async def study_page(request: Request) -> Response:
        path = request.path_params["path"]
        study_file(root, path)
        return HTMLResponse(page(f"braver · {path}", "study", study=path))

    async def overview(request: Request) -> Response:
        return JSONResponse(clean(folders.overview(root)), headers=NO_STORE)

    async def run_api(request: Request) -> Response:
        folder = run_folder(root, request.path_params["name"])
        return JSONResponse(clean(folders.run_details(folder)), headers=NO_STORE)

    async def compare_api(request: Request) -> Response:
        names = [n for n in request.query_params.get("runs", "").split(",") if n]
        runs = []
        for name in names:
            folder = run_folder(root, name)
            columns, history = folders.read_history(folder)
            runs.append(
                {
                    "name": name,
                    "columns": columns,
                    "history": history,
                    "summary": folders.run_summary(folder),
                }
            )
        return JSONResponse(clean({"runs": runs}), headers=NO_STORE)

    async def study_api(request: Request) -> Response:
        path = request.path_params["path"]
        details = folders.study_details(study_file(root, path))
        details["path"] = path.strip("/")
        return JSONResponse(clean(details), headers=NO_STORE)

    async def files(request: Request) -> Response:
        found = inside(root, request.path_params["path"])
        if found is None:
            raise HTTPException(404, "not found")
        return FileResponse(found, headers={"Cache-Control": "no-cache"})

    async def assets(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            raise HTTPException(404, "not found")
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return Response(asset_text(name), media_type=kind, headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/", runs_page),
        Route("/run/{name}", run_page),
        Route("/compare", compare_page),
        Route("/study/{path:path}", study_page),
        Route("/api/overview", overview),
        Route("/api/run/{name}", run_api),
        Route("/api/compare", compare_api),
        Route("/api/study/{path:path}", study_api),
        Route("/files/{path:path}", files),
        Route("/assets/{name}", assets),
    ]  # Route's default methods: GET (and HEAD) only
    middleware = (
        [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))]
        if allowed_hosts
        else []
    )
    return Starlette(routes=routes, middleware=middleware)


def allowed_hosts_for(host: str) -> list[str] | None:
    """Host headers to accept when bound to ``host``: the loopback names for a loopback
    address, anything when bound to every interface, else that address."""
    if host in LOOPBACK_HOSTS:
        return ["127.0.0.1", "localhost", "[::1]"]
    if host in ("0.0.0.0", "::"):
        return None
    return [host]


def serve(root: str | Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the dashboard until interrupted (Ctrl-C)."""
    import uvicorn

    app = create_app(root, allowed_hosts_for(host))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
