"""The service's ASGI app: JSON routes over one open ``SceneIndex``.

Routes (every one behind the bearer token when one is set; the page alone also takes it as
``/?token=...``, and sends it as a header from then on):

    GET  /                     the search page (static HTML and JS, no build step)
    GET  /docs                 the API (HTML rendered from /openapi.json, no script)
    GET  /openapi.json         the API as OpenAPI 3.1 (``openapi.py``)
    GET  /healthz              {"ok": true, "rows": N, "generation": G}
    GET  /info                 the manifest's summary
    GET  /scenes/{row_id}      one scene's metadata (404 for a row the index does not hold)
    GET  /scenes/{row_id}/thumbnail?size=256
                               a JPEG of that scene as the index saw it (bands, stretch),
                               read from its own url; cached. 502 when it cannot be read
    POST /query?top=50         images as multipart form field ``image`` (repeatable;
                               each answer then has the image's ``image_id``;
         /query?radius=R       bands=R,G,B for multi-band ones; window=COL,ROW,W,H for a
                               part of each; group_by=scene for the best chip a scene),
                               or JSON {"codes": ["<hex of K/8 bytes>", ...]} or
                               {"row_ids": [ROW_ID, ...]} (more like these) or
                               {"image_ids": [ID, ...]} (images uploaded before) or,
                               only with --allow-url-queries, {"urls": [URL, ...]}
                               (fetched by the service); answers {"queries":
                               [{"query": NAME, "hits": [HIT, ...], "total": N}, ...]},
                               each HIT rank, distance and the scene's metadata.
                               label=, crs=, date_from=, date_to=, max_distance=,
                               bbox=W,S,E,N filter the hits found (``hit_filters``);
                               offset= and limit= page them; format=csv|geojson
                               answers with the (filtered) hits as a file
    POST /preview              one uploaded image -> {"thumbnail": JPEG data URL,
                               "wgs84": its footprint or null} (a TIFF too)

Every error is ``{"error": "<one line>"}`` with its status: 401 (token), 403 (URL queries
are off), 404, 413 (upload bytes or pixels above the limits), 422 (bad input: the message
names the upload), 500 and 502 (never a traceback). No route reads a path or URL given by
the request, except ``{"urls"}`` queries when the service was started to allow them:
thumbnails come from row ids, and their files from the index's metadata.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dahash_index.columns import WGS84_COLUMNS
from dahash_index.errors import one_line
from dahash_index.model.rerank import DEFAULT_RERANK, DEFAULT_SHORTLIST, RERANKS
from dahash_index.query.scene_index import SceneIndex, own_files_first
from dahash_index.scenes.chips import parse_window
from dahash_index.scenes.scene import DEFAULT_MAX_PIXELS, SceneDecodeError, parse_bands
from dahash_index.serve.batching import EncodeBatcher
from dahash_index.serve.hit_filters import HitFilters, page_of
from dahash_index.serve.openapi import docs_html, openapi_schema
from dahash_index.serve.requests import (
    ServiceError,
    codes_of,
    fetch_all,
    int_param,
    json_body,
    row_of,
    uploads_of,
    urls_of,
)
from dahash_index.serve.scenes import hit_json, scene_json
from dahash_index.serve.thumbnails import SIZES, Thumbnails, render_preview
from dahash_index.serve.uploaded import UploadedQueries, image_id
from dahash_index.store import IndexStoreError

# An upload is searched as it is (one backbone pass), not in the 4 rotations ``query`` searches
# by default: a service answers many users at once, and each orientation is one more backbone
# pass per upload (benchmarks/serve.py's p50 goal, 150 ms, holds with one). ``serve
# --orientations 4`` finds turned copies too.
SERVE_ORIENTATIONS = 1
MAX_SHORTLIST = 10_000  # rows a query may ask to re-rank (?shortlist=)
ANSWER_FORMATS = ("json", "csv", "geojson")  # ?format=: the answer, or its hits as a file

# A SceneDecodeError for an image above the pixel limit (images.check_pixels, _pillow_bomb).
_TOO_MANY_PIXELS = re.compile(r"pixels, above the limit of \d+$")


@dataclass(frozen=True)
class ServiceSettings:
    """token: required as ``Authorization: Bearer <token>`` on every route when set.
    max_upload_bytes: a request body above this gets 413. max_pixels: an image whose header
    says more pixels gets 413 before it is decoded. max_images: images (or codes, row ids,
    URLs) in one request. max_hits: the largest ``top``. max_answer_hits: the most hits one
    answer holds, all its queries together (a larger one gets 413). batch_window_s: how long
    an upload waits for those of concurrent requests, to be encoded with them
    (``batching``). orientations: each uploaded image is searched in this many orientations
    (``SceneIndex.query``'s; see ``SERVE_ORIENTATIONS``). allow_url_queries: whether
    ``POST /query`` fetches ``{"urls": [...]}`` itself (any path or URL the service can read,
    with the index's storage options; at most max_upload_bytes each). basemap: the page's
    map tiles, an XYZ URL template; None draws footprints on a blank map, so that the page
    asks nothing of any other server."""

    token: str | None = None
    max_upload_bytes: int = 32 << 20
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_images: int = 64
    max_hits: int = 1000
    max_answer_hits: int = 20_000
    batch_window_s: float = 0.005
    orientations: int = SERVE_ORIENTATIONS
    allow_url_queries: bool = False
    basemap: str | None = None  # a tile URL template for the page's map ({z}/{x}/{y})


def create_app(index: SceneIndex, settings: ServiceSettings | None = None) -> Starlette:
    """The app answering from ``index`` (open it with ``reload="auto"`` to see new commits)."""
    settings = settings or ServiceSettings()

    async def healthz(request: Request) -> JSONResponse:
        reader = index.reader
        return JSONResponse({"ok": True, "rows": reader.row_count,
                             "generation": reader.generation})

    async def info(request: Request) -> JSONResponse:
        m = index.reader.manifest
        return JSONResponse({
            "index": str(index.reader.path), "rows": m.row_count, "shards": len(m.shards),
            "errors": sum(e.error_count for e in m.shards.values()),
            "bits": m.bits, "kind": m.kind, "nlist": m.nlist,
            "generation": m.generation, "model_sha256": m.model_sha256,
            "backbone": m.backbone, "bands": m.extra.get("bands"),
            "updated": m.updated, "basemap": settings.basemap,
            "orientations": settings.orientations,
        })

    batcher = EncodeBatcher(index, settings.batch_window_s, settings.max_images,
                            settings.orientations)
    bands = index.reader.manifest.extra.get("bands")
    thumbnails = Thumbnails(tuple(bands) if bands else None, index.storage_options)

    async def scene(request: Request) -> JSONResponse:
        return JSONResponse(scene_json(row_of(index, request.path_params["row_id"])))

    async def thumbnail(request: Request) -> Response:
        row = row_of(index, request.path_params["row_id"])
        size = int_param(request, "size")
        size = 256 if size is None else size
        if not SIZES[0] <= size <= SIZES[1]:
            raise ServiceError(422, f"size must be {SIZES[0]} .. {SIZES[1]}, got {size}")
        try:
            jpeg = await run_in_threadpool(thumbnails.get, row, size)
        except (OSError, SceneDecodeError) as err:
            raise ServiceError(502, f"scene {row['row_id']} cannot be shown: {one_line(err)}"
                               ) from None
        return Response(jpeg, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400"})

    async def encode(images: list[bytes], names: list[str], bands, window
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        codes, owners, errors, vectors = await run_in_threadpool(
            batcher.encode, images, names, bands, settings.max_pixels, window)
        if any(errors):
            failed = [e for e in errors if e is not None]
            status = 413 if all(_TOO_MANY_PIXELS.search(e) for e in failed) else 422
            raise ServiceError(status, "; ".join(failed))
        return codes, owners, vectors

    uploaded = UploadedQueries()

    async def query(request: Request) -> Response:
        top, radius, nprobe = (int_param(request, name) for name in ("top", "radius", "nprobe"))
        if top is not None and radius is not None:
            raise ServiceError(422, "give top or radius, not both")
        if top is not None and not 1 <= top <= settings.max_hits:
            raise ServiceError(422, f"top must be 1 .. {settings.max_hits}, got {top}")
        bands, window = request.query_params.get("bands"), request.query_params.get("window")
        group_by = request.query_params.get("group_by")
        if group_by not in (None, "scene"):
            raise ServiceError(422, f"group_by must be 'scene', got {group_by!r}")
        rerank = request.query_params.get("rerank", DEFAULT_RERANK)
        if rerank not in RERANKS:
            raise ServiceError(422, f"rerank must be one of {', '.join(RERANKS)}, got {rerank!r}")
        shortlist = int_param(request, "shortlist") or DEFAULT_SHORTLIST
        if not 1 <= shortlist <= MAX_SHORTLIST:
            raise ServiceError(422, f"shortlist must be 1 .. {MAX_SHORTLIST}, got {shortlist}")
        filters = HitFilters.from_params(request.query_params)
        offset, limit = int_param(request, "offset") or 0, int_param(request, "limit")
        if offset < 0 or (limit is not None and limit < 1):
            raise ServiceError(422, "offset must be 0 or more and limit 1 or more")
        fmt = request.query_params.get("format", "json")
        if fmt not in ANSWER_FORMATS:
            raise ServiceError(422, f"format must be one of {', '.join(ANSWER_FORMATS)}, got "
                                    f"{fmt!r}")
        try:
            bands = parse_bands(bands) if bands is not None else None
            window = parse_window(window) if window is not None else None
        except ValueError as err:
            raise ServiceError(422, one_line(err)) from None
        owners = vectors = image_ids = None
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            body = await json_body(request)
            if isinstance(body, dict) and "urls" in body:
                if not settings.allow_url_queries:
                    raise ServiceError(403, "URL queries are off: this service was started "
                                            "without --allow-url-queries")
                names = urls_of(body["urls"], settings.max_images)
                images = await run_in_threadpool(
                    fetch_all, names, index.storage_options, settings.max_upload_bytes)
                codes, owners, vectors = await encode(images, names, bands, window)
            elif isinstance(body, dict) and "image_ids" in body:
                codes, names, owners, vectors = uploaded.recall(body["image_ids"],
                                                                settings.max_images)
                image_ids = body["image_ids"]
            else:
                codes, names, vectors = codes_of(body, index, settings.max_images)
        elif kind == "multipart/form-data":
            images, names = await uploads_of(request, settings.max_images)
            codes, owners, vectors = await encode(images, names, bands, window)
            image_ids = [image_id(data, bands, window) for data in images]
            uploaded.remember(image_ids, names, codes, owners, vectors)
        else:
            raise ServiceError(422, "send images as multipart/form-data (field 'image') or "
                                    "codes as application/json ({\"codes\": [hex, ...]})")
        if radius is None and len(names) * (top or 50) > settings.max_answer_hits:
            raise ServiceError(413, f"{len(names)} queries x top {top or 50} hits is above the "
                                    f"limit of {settings.max_answer_hits} hits an answer")
        search = partial(index.query_codes, codes, top, radius, nprobe, names, owners, group_by,
                         vectors, rerank, shortlist)
        try:
            table = await run_in_threadpool(search)
        except IndexStoreError:
            raise
        except ValueError as err:  # the search arguments (radius, nprobe)
            raise ServiceError(422, one_line(err)) from None
        if image_ids is not None:  # an upload named by its absolute path or URL (the CLI's)
            table = own_files_first(table, [n if "://" in n or os.path.isabs(n) else None
                                            for n in names])
        if table.num_rows > settings.max_answer_hits:  # a radius query found that many
            raise ServiceError(413, f"{table.num_rows} hits within radius {radius}, above the "
                                    f"limit of {settings.max_answer_hits} hits an answer; "
                                    "ask for a smaller radius or top")
        found: list[list[dict]] = [[] for _ in names]
        for row in table.to_pylist():
            if row["rank"] is not None:
                found[row["query"]].append(row)
        if fmt != "json":  # every hit that passes the filters, as a file
            return _export([hit for hits in found for hit in hits if filters.keep(hit)], fmt)
        answers = []
        for number, (name, hits) in enumerate(zip(names, found, strict=True)):
            shown, total = page_of(hits, filters, offset, limit)
            answer = {"query": name, "hits": [hit_json(r) for r in shown], "total": total,
                      "offset": offset}
            if image_ids is not None:
                answer["image_id"] = image_ids[number]
            answers.append(answer)
        return JSONResponse({"queries": answers})

    async def preview(request: Request) -> JSONResponse:
        (data,), (name,) = await uploads_of(request, 1)
        try:
            jpeg, wgs84 = await run_in_threadpool(render_preview, data, name, thumbnails.bands,
                                                  256, settings.max_pixels)
        except SceneDecodeError as err:
            raise ServiceError(422, f"{name}: {one_line(err)}") from None
        footprint = None if wgs84 is None else dict(zip(WGS84_COLUMNS, wgs84, strict=True))
        return JSONResponse({"thumbnail": "data:image/jpeg;base64,"
                             + base64.b64encode(jpeg).decode(), "wgs84": footprint})

    page = _page()

    async def home(request: Request) -> Response:
        return Response(page, media_type="text/html")

    schema = openapi_schema(settings.max_hits, settings.allow_url_queries)

    async def docs(request: Request) -> HTMLResponse:
        return HTMLResponse(docs_html(schema))

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(schema)

    routes = [
        Route("/", home),
        Route("/docs", docs),
        Route("/openapi.json", openapi),
        Route("/healthz", healthz),
        Route("/info", info),
        Route("/scenes/{row_id}", scene),
        Route("/scenes/{row_id}/thumbnail", thumbnail),
        Route("/query", query, methods=["POST"]),
        Route("/preview", preview, methods=["POST"]),
    ]
    handlers = {
        ServiceError: _service_error,
        HTTPException: _http_error,
        IndexStoreError: _store_error,
        Exception: _internal_error,
    }
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.add_middleware(_Guard, token=settings.token, max_bytes=settings.max_upload_bytes)
    return app


class _Guard:
    """The bearer token (401 without it) and the body limit (413 from Content-Length, or as
    soon as the bytes received pass it), before any route runs."""

    def __init__(self, app: ASGIApp, token: str | None, max_bytes: int) -> None:
        self.app, self.token, self.max_bytes = app, token, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token is not None:
            given = headers.get("authorization", "")
            if scope["path"] == "/" and not given:  # a browser opening the page: ?token=
                query = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode()))
                given = f"Bearer {query['token']}" if "token" in query else ""
            expected = f"Bearer {self.token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                reason = "a bearer token is required" if not given else "wrong token"
                response = JSONResponse({"error": reason}, 401,
                                        headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            return await _too_large(self.max_bytes)(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise ServiceError(413, _too_large_text(self.max_bytes))
            return message

        await self.app(scope, counted, send)


def _too_large_text(max_bytes: int) -> str:
    return f"the request is larger than the limit of {max_bytes} bytes"


def _too_large(max_bytes: int) -> JSONResponse:
    return JSONResponse({"error": _too_large_text(max_bytes)}, 413)


async def _service_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, ServiceError)
    return JSONResponse({"error": err.message}, err.status)


async def _http_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, HTTPException)
    return JSONResponse({"error": str(err.detail)}, err.status_code)


async def _store_error(request: Request, err: Exception) -> JSONResponse:
    return JSONResponse({"error": f"the index cannot be read: {one_line(err)}"}, 500)


async def _internal_error(request: Request, err: Exception) -> JSONResponse:
    return JSONResponse({"error": f"internal error: {one_line(err)}"}, 500)


def _export(hits: list[dict], fmt: str) -> Response:
    """Hit rows as a CSV or GeoJSON file to download (``query.export``)."""
    from dahash_index.query import export

    if fmt == "csv":
        body, media = export.to_csv(hits), "text/csv"
    else:
        body, media = json.dumps(export.to_geojson(hits)), "application/geo+json"
    return Response(body, media_type=media, headers={
        "Content-Disposition": f'attachment; filename="hits.{fmt}"'})


def _page() -> bytes:
    """The search page, with Leaflet (shipped in ``static/leaflet``, BSD-2) inlined: the
    page needs no other request to draw its map, and no token-less static route."""
    static = Path(__file__).parent / "static"
    html = (static / "index.html").read_text()
    leaflet = static / "leaflet"
    html = html.replace("<!-- leaflet.css -->",
                        f"<style>{(leaflet / 'leaflet.css').read_text()}</style>")
    return html.replace("<!-- leaflet.js -->",
                        f"<script>{(leaflet / 'leaflet.js').read_text()}</script>").encode()
