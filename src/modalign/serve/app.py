"""The HTTP API and web page over an index and its model (FastAPI; extra ``modalign[serve]``).

Routes (OpenAPI at ``/docs``):

* ``GET /health``: item count, modalities, backend, model id.
* ``POST /search``: JSON ``{"text": ..., "id": ..., "k": 10, "modality": "image"}`` (one of text
  or id); results best first with scores and metadata.
* ``POST /search/file``: a multipart upload (``file``; form fields ``k``, ``modality``). The
  declared content type must be an image or audio type the server reads, and the first bytes
  must match it; the size is limited (``max_upload_mb``).
* ``GET /items/{id}``: an item's metadata. ``GET /items/{id}/media``: the file the item was
  indexed from. Only paths recorded in the index are served, looked up by exact id, so no
  request can name a path (no traversal).
* ``GET /``: the search page (``static/``).

Every bad request gets a 4xx JSON body ``{"error": "one line"}``: validation errors are
flattened to their first problem, unreadable uploads are 422, and nothing returns a stack trace.
Searches are serialised with one lock: the model and the index are not shared between threads.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from modalign.errors import ModalignError
from modalign.index.base import Hit, QueryEncoder
from modalign.index.query import Query, search_query
from modalign.index.store import Index
from modalign.serve.uploads import read_upload

STATIC = Path(__file__).with_name("static")
MAX_K = 100
#: Media responses may be SVG (which can hold scripts): they get a sandboxing policy.
MEDIA_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox",
    "X-Content-Type-Options": "nosniff",
}


class SearchRequest(BaseModel):
    """A JSON search: exactly one of ``text`` or ``id``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | None = Field(None, min_length=1, max_length=2000, description="query text")
    id: str | None = Field(None, min_length=1, max_length=1000, description="an indexed item's id")
    k: int = Field(10, ge=1, le=MAX_K, description="number of results")
    modality: str | None = Field(None, max_length=100, description="only results of this modality")


class ApiError(HTTPException):
    """A 4xx answer with a one-line message."""


def create_app(index: Index, encoder: QueryEncoder | None, max_upload_mb: float = 10.0) -> FastAPI:
    """The FastAPI application serving ``index``, embedding queries with ``encoder``.

    Args:
        index: the index to search. encoder: its model (None: only id queries work).
        max_upload_mb: largest accepted upload in MiB.
    """
    app = FastAPI(
        title="modalign search", version="1", description="Search a shared embedding space."
    )
    _install_error_handlers(app)
    _limit_body_size(app, int(max_upload_mb * 2**20))
    _add_search_routes(app, index, encoder, int(max_upload_mb * 2**20))
    _add_item_routes(app, index)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


def _add_search_routes(
    app: FastAPI, index: Index, encoder: QueryEncoder | None, upload_limit: int
) -> None:
    lock = threading.Lock()

    def run(query: Query, k: int, modality: str | None) -> dict[str, Any]:
        with lock:
            hits = search_query(index, encoder, query, k=k, modality=modality)
        return {"results": [_hit_json(index, h) for h in hits]}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "items": len(index),
            "modalities": index.modalities,
            "backend": index.backend,
            "model_id": index.model_id,
            "query_kinds": sorted({encoder.input_kind(m) for m in encoder.modalities})
            if encoder
            else [],
        }

    @app.post("/search")
    def search(body: SearchRequest) -> dict[str, Any]:
        if (body.text is None) == (body.id is None):
            raise ApiError(422, "give exactly one of text or id")
        if body.id is not None and body.id not in index.items:
            raise ApiError(404, f"id {body.id!r} is not in the index")
        return run(Query(text=body.text, item_id=body.id), body.k, body.modality)

    @app.post("/search/file")
    def search_file(
        file: Annotated[UploadFile, File(description="an image or a sound")],
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
        modality: Annotated[str | None, Form(max_length=100)] = None,
    ) -> dict[str, Any]:
        upload = read_upload(file, upload_limit)  # 413/415/422 on a bad upload
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"upload{upload.suffix}"
            path.write_bytes(upload.data)
            try:
                return run(Query(file=str(path), modality=upload.modality), k, modality)
            except ModalignError:
                raise
            except Exception as err:  # the decoder refused the bytes: the client's file
                raise ApiError(
                    422, f"could not read the uploaded {upload.modality}: {_one_line(err)}"
                ) from None


def _limit_body_size(app: FastAPI, upload_limit: int) -> None:
    """413 before reading a body whose declared length is over the limit (uploads: the file
    limit plus room for the form fields; JSON: 64 KiB)."""

    @app.middleware("http")
    async def check_length(request: Request, call_next: Any) -> Any:
        limit = upload_limit + (1 << 16) if request.url.path == "/search/file" else 1 << 16
        length = request.headers.get("content-length", "0")
        if not length.isdigit():
            return JSONResponse({"error": "invalid Content-Length header"}, status_code=400)
        if int(length) > limit:
            return JSONResponse(
                {"error": f"request body larger than {limit} bytes"}, status_code=413
            )
        return await call_next(request)


def _add_item_routes(app: FastAPI, index: Index) -> None:
    # Ids may contain "/": one path route resolves ".../media" after checking the whole id.
    @app.get("/items/{item_id:path}", summary="An item's metadata, or /media: its file")
    def item(item_id: str) -> Any:
        if item_id in index.items:
            return _item_json(index, item_id)
        if item_id.endswith("/media") and item_id[: -len("/media")] in index.items:
            return _media(index, item_id[: -len("/media")])
        raise ApiError(404, f"id {item_id!r} is not in the index")


def _media(index: Index, item_id: str) -> FileResponse:
    source = index.items[item_id].metadata.get("source")
    if not isinstance(source, str) or not Path(source).is_file():
        raise ApiError(404, f"item {item_id!r} has no media file")
    return FileResponse(source, headers=MEDIA_HEADERS)


def _hit_json(index: Index, hit: Hit) -> dict[str, Any]:
    return {**_item_json(index, hit.id), "score": round(hit.score, 6)}


def _item_json(index: Index, item_id: str) -> dict[str, Any]:
    item = index.items[item_id]
    source = item.metadata.get("source")
    has_media = isinstance(source, str) and bool(source)
    return {
        "id": item.id,
        "modality": item.modality,
        "metadata": item.metadata,
        "media": f"/items/{_quote(item.id)}/media" if has_media else None,
    }


def _quote(item_id: str) -> str:
    from urllib.parse import quote

    return quote(item_id, safe="")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]


def _install_error_handlers(app: FastAPI) -> None:
    def reply(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": _one_line(ValueError(message))}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return reply(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return reply(exc.status_code, str(exc.detail))

    @app.exception_handler(ModalignError)
    async def user_error(request: Request, exc: ModalignError) -> JSONResponse:
        return reply(400, str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return reply(500, "internal error")  # never a trace to the client
