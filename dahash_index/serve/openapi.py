"""The service's API as an OpenAPI 3.1 document (``/openapi.json``) and its HTML rendering
(``/docs``: plain HTML from the same document, no script and no internet)."""

from __future__ import annotations

import html
from typing import Any

from dahash_index.columns import BOUNDS_COLUMNS, WGS84_COLUMNS, WINDOW_COLUMNS
from dahash_index.model.rerank import (
    DEFAULT_RERANK,
    DEFAULT_SHORTLIST,
    NEAR_SCORE,
    NEAR_SCORES,
    RERANKS,
)
from dahash_index.serve.thumbnails import SIZES

_ERROR = {"description": "an error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}}
_NUMBER_OR_NULL = {"type": ["number", "null"]}


def _json(ref: str, description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _param(name: str, where: str, description: str, schema: dict, required: bool = False) -> dict:
    return {"name": name, "in": where, "description": description, "schema": schema,
            "required": required}


_ROW_ID = _param("row_id", "path", "an index row id (0 .. rows - 1)",
                 {"type": "integer", "minimum": 0}, required=True)


def openapi_schema(max_hits: int, url_queries: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``create_app``'s routes. max_hits: the largest ``top``;
    url_queries: whether ``POST /query`` takes ``{"urls": [...]}`` (``--allow-url-queries``)."""
    urls_note = ("" if url_queries else
                 " This service was started without --allow-url-queries: {\"urls\"} gets 403.")
    query_body = {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "JPEG, PNG or TIFF/GeoTIFF files (the field repeats)"}},
            "required": ["image"]}},
        "application/json": {"schema": {"oneOf": [
            {"type": "object", "required": ["codes"], "properties": {"codes": {
                "type": "array", "minItems": 1,
                "items": {"type": "string", "pattern": "^[0-9a-fA-F]+$",
                          "description": "a code as K/4 hex digits"}}}},
            {"type": "object", "required": ["row_ids"], "properties": {"row_ids": {
                "type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0},
                "description": "more like these scenes of the index"}}},
            {"type": "object", "required": ["image_ids"], "properties": {"image_ids": {
                "type": "array", "minItems": 1, "items": {"type": "string"},
                "description": "images uploaded before (an answer's image_id), while the "
                               "service holds them (404 after)"}}},
            {"type": "object", "required": ["urls"], "properties": {"urls": {
                "type": "array", "minItems": 1, "items": {"type": "string"},
                "description": "images the service fetches itself (any fsspec URL); only "
                               "with --allow-url-queries"}}},
        ]}},
    }
    paths = {
        "/": {"get": {"summary": "The search page (HTML; with a token: /?token=...)",
                      "responses": {"200": {"description": "the page",
                                            "content": {"text/html": {}}}}}},
        "/docs": {"get": {"summary": "This document as HTML",
                          "responses": {"200": {"description": "HTML",
                                                "content": {"text/html": {}}}}}},
        "/openapi.json": {"get": {"summary": "This document",
                                  "responses": {"200": {"description": "OpenAPI 3.1",
                                                        "content": {"application/json": {}}}}}},
        "/healthz": {"get": {"summary": "Liveness, rows and the committed generation",
                             "responses": {"200": _json("Health", "the index is open")}}},
        "/info": {"get": {"summary": "The index's manifest summary",
                          "responses": {"200": _json("Info", "the summary")}}},
        "/scenes/{row_id}": {"get": {
            "summary": "One scene's metadata", "parameters": [_ROW_ID],
            "responses": {"200": _json("Scene", "the scene"), "404": _ERROR, "422": _ERROR}}},
        "/scenes/{row_id}/thumbnail": {"get": {
            "summary": "A JPEG of the scene as the index saw it (bands, 16-bit stretch), read "
                       "from the url the index holds for it; cached",
            "parameters": [_ROW_ID, _param("size", "query", "longest side in pixels",
                                           {"type": "integer", "minimum": SIZES[0],
                                            "maximum": SIZES[1], "default": 256})],
            "responses": {"200": {"description": "the thumbnail",
                                  "content": {"image/jpeg": {}}},
                          "404": _ERROR, "422": _ERROR, "502": _ERROR}}},
        "/query": {"post": {
            "summary": "Search with images, codes, scenes of the index, or URLs",
            "description": "Give top or radius (default: top=50)." + urls_note,
            "parameters": [
                _param("top", "query", "hits per query",
                       {"type": "integer", "minimum": 1, "maximum": max_hits}),
                _param("radius", "query", "every hit within this Hamming distance",
                       {"type": "integer", "minimum": 0}),
                _param("nprobe", "query", "IVF lists searched (IVF indexes)",
                       {"type": "integer", "minimum": 1}),
                _param("bands", "query", "1-based bands shown as R,G,B for multi-band TIFFs",
                       {"type": "string", "example": "4,3,2"}),
                _param("window", "query", "COL,ROW,WIDTH,HEIGHT: query with this pixel window "
                       "of each image", {"type": "string", "example": "1024,2048,256,256"}),
                _param("group_by", "query", "scene: the best hit (chip) of each scene",
                       {"type": "string", "enum": ["scene"]}),
                _param("rerank", "query", "how the re-rank vectors order the hits: none "
                       "(Hamming distance, then row id), ties (inside equal distances), near "
                       f"(the shortlist's rows scoring {NEAR_SCORE:g} or more "
                       f"({NEAR_SCORES[64]:g} with 64-d vectors) first, by score; "
                       "the others as ties), full (a shortlist of the nearest, by score)",
                       {"type": "string", "enum": list(RERANKS), "default": DEFAULT_RERANK}),
                _param("shortlist", "query", "rows re-ranked with rerank=full, searched for "
                       "near rows with rerank=near",
                       {"type": "integer", "minimum": 1, "default": DEFAULT_SHORTLIST}),
                _param("label", "query", "keep the hits with this label", {"type": "string"}),
                _param("crs", "query", "keep the hits in this CRS", {"type": "string",
                                                                     "example": "EPSG:32633"}),
                _param("date_from", "query", "keep the hits dated on or after (YYYY-MM-DD)",
                       {"type": "string", "format": "date"}),
                _param("date_to", "query", "keep the hits dated on or before (YYYY-MM-DD)",
                       {"type": "string", "format": "date"}),
                _param("max_distance", "query", "keep the hits within this Hamming distance",
                       {"type": "integer", "minimum": 0}),
                _param("bbox", "query", "keep the hits whose WGS84 footprint meets this box "
                       "(WEST,SOUTH,EAST,NORTH degrees)", {"type": "string",
                                                           "example": "12.1,41.8,12.7,42.1"}),
                _param("offset", "query", "the first hit of the page (after the filters)",
                       {"type": "integer", "minimum": 0, "default": 0}),
                _param("limit", "query", "hits a page [default: all]",
                       {"type": "integer", "minimum": 1}),
                _param("format", "query", "json: the answer; csv, geojson: every hit that "
                       "passes the filters, as a file", {"type": "string",
                                                         "enum": ["json", "csv", "geojson"],
                                                         "default": "json"}),
            ],
            "requestBody": {"required": True, "content": query_body},
            "responses": {"200": _json("Answer", "hits per query"), "403": _ERROR,
                          "404": _ERROR, "413": _ERROR, "422": _ERROR}}},
        "/preview": {"post": {
            "summary": "An uploaded image's thumbnail (a TIFF too) and WGS84 footprint",
            "requestBody": {"required": True, "content": {"multipart/form-data": {
                "schema": {"type": "object", "properties": {
                    "image": {"type": "string", "format": "binary"}}, "required": ["image"]}}}},
            "responses": {"200": {"description": "{\"thumbnail\": a JPEG data URL, "
                                                 "\"wgs84\": {west, south, east, north} or "
                                                 "null}",
                                  "content": {"application/json": {}}},
                          "413": _ERROR, "422": _ERROR}}},
    }
    bounds = {"type": ["object", "null"], "description": "null when not georeferenced"}
    scene = {"type": "object", "properties": {
        "row_id": {"type": "integer"}, "url": {"type": "string"},
        "member": {"type": ["string", "null"], "description": "the tar member, if any"},
        "shard": {"type": "string"}, "label": {"type": ["string", "null"]},
        "width": {"type": "integer"}, "height": {"type": "integer"},
        "bands": {"type": "integer"}, "dtype": {"type": "string"},
        "crs": {"type": ["string", "null"]}, "datetime": {"type": ["string", "null"]},
        "item_id": {"type": ["string", "null"], "description": "its STAC item (build --stac)"},
        "properties": {"type": ["string", "null"],
                       "description": "its STAC item's properties, as JSON"},
        "bounds": bounds | {"properties": {k: _NUMBER_OR_NULL for k in
                                           BOUNDS_COLUMNS}},
        "wgs84": bounds | {"properties": {k: _NUMBER_OR_NULL for k in
                                          WGS84_COLUMNS}},
        "pixel_size": {"type": ["array", "null"], "items": {"type": "number"}},
        "window": {"type": ["object", "null"], "description": "a chip's pixel window in its "
                   "scene (build --tile); null for a whole scene",
                   "properties": {k: {"type": "integer"} for k in
                                  WINDOW_COLUMNS}},
    }}
    schemas = {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string", "description": "one line"}}},
        "Health": {"type": "object", "properties": {
            "ok": {"type": "boolean"}, "rows": {"type": "integer"},
            "generation": {"type": "integer"}}},
        "Info": {"type": "object", "properties": {k: {} for k in (
            "index", "rows", "shards", "errors", "bits", "kind", "nlist", "generation",
            "model_sha256", "backbone", "bands", "updated")}},
        "Scene": scene,
        "Hit": {"allOf": [{"$ref": "#/components/schemas/Scene"}, {
            "type": "object", "properties": {
                "rank": {"type": "integer"}, "distance": {"type": "integer"},
                "score": {"type": ["number", "null"], "description": "the re-rank score "
                          "(cosine of the re-rank vectors); null when not re-ranked"}}}]},
        "Answer": {"type": "object", "properties": {"queries": {"type": "array", "items": {
            "type": "object", "properties": {
                "query": {"type": "string", "description": "the upload's file name, "
                                                           "'code I', 'scene ROW_ID' or the URL"},
                "hits": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
                "total": {"type": "integer", "description": "hits that pass the filters"},
                "offset": {"type": "integer"},
                "image_id": {"type": "string", "description": "an uploaded image's id: "
                                                              "{\"image_ids\": [ID]} queries "
                                                              "with it again"}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "dahash-index", "version": "1",
                 "description": "Content-based retrieval over a dahash-index index. With a "
                                "token, every route needs 'Authorization: Bearer TOKEN'."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
    }


def docs_html(schema: dict[str, Any]) -> str:
    """``schema``'s routes as one HTML page: method, path, summary, parameters, body types and
    answers; the full document is linked."""
    e = html.escape
    parts = [f"<!doctype html><meta charset=utf-8><title>{e(schema['info']['title'])} API"
             "</title><style>body{font:14px sans-serif;max-width:60em;margin:2em auto}"
             "code{background:#eee;padding:0 .2em}td{padding:0 1em 0 0;vertical-align:top}"
             "</style>",
             f"<h1>{e(schema['info']['title'])} API</h1><p>{e(schema['info']['description'])}"
             "</p><p>Machine-readable: <a href=openapi.json>openapi.json</a> (OpenAPI 3.1). "
             "Errors are <code>{\"error\": \"one line\"}</code>.</p>"]
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            parts.append(f"<h2><code>{method.upper()} {e(path)}</code></h2>"
                         f"<p>{e(op['summary'])}</p>")
            if op.get("description"):
                parts.append(f"<p>{e(op['description'])}</p>")
            if op.get("parameters"):
                rows = "".join(f"<tr><td><code>{e(p['name'])}</code></td><td>{e(p['in'])}</td>"
                               f"<td>{e(p['description'])}</td></tr>" for p in op["parameters"])
                parts.append(f"<table>{rows}</table>")
            if "requestBody" in op:
                kinds = ", ".join(op["requestBody"]["content"])
                parts.append(f"<p>Body: {e(kinds)}</p>")
            answers = ", ".join(f"{code} {r['description']}" for code, r in op["responses"].items())
            parts.append(f"<p>Answers: {e(answers)}</p>")
    return "".join(parts)
