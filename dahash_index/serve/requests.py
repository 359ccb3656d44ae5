"""What a request to the service asks for, checked: row ids, integer parameters, JSON
bodies of codes, row ids or URLs, uploaded images. Every refusal is a ``ServiceError``
(one line, its HTTP status)."""

from __future__ import annotations

import re

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import Request

from dahash_index.errors import is_int, one_line
from dahash_index.query.scene_index import SceneIndex
from dahash_index.sources.remote import describe, url_filesystem
from dahash_index.store import IndexStoreError


class ServiceError(Exception):
    """Answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def row_of(index: SceneIndex, text: str) -> dict:
    """The metadata row of the row id ``text`` (a path parameter): 422 unless an integer,
    404 unless a row the index holds."""
    if not text.isdigit() or len(text) > 19:
        raise ServiceError(422, f"row id {text!r} is not a non-negative integer")
    try:
        table = index.reader.metadata(np.array([int(text)], dtype=np.int64))
    except ValueError as err:
        if isinstance(err, IndexStoreError):
            raise
        raise ServiceError(404, f"row id {text} is not in this index") from None
    return table.to_pylist()[0]


def int_param(request: Request, name: str) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    if not re.fullmatch(r"-?\d{1,9}", text.strip()):
        raise ServiceError(422, f"{name} must be an integer, got {text!r}")
    return int(text)


async def json_body(request: Request) -> object:
    try:
        return await request.json()
    except ValueError:
        raise ServiceError(422, "the body is not JSON") from None


def codes_of(body: object, index: SceneIndex, max_items: int
             ) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """{"codes": [hex, ...]} -> (uint8 (n, K/8), names "code i", no vectors); {"row_ids":
    [int, ...]} -> the codes of those rows ("more like this"), names "scene ROW_ID", and
    their re-rank vectors when the index keeps them."""
    if isinstance(body, dict) and "row_ids" in body:
        return codes_of_rows(index, body["row_ids"], max_items)
    bits = index.bits
    codes = body.get("codes") if isinstance(body, dict) else None
    if not isinstance(codes, list) or not codes:
        raise ServiceError(422, 'expected {"codes": [hex, ...]}, {"row_ids": [int, ...]} or '
                                '{"urls": [url, ...]}, with at least one')
    if len(codes) > max_items:
        raise ServiceError(422, f"{len(codes)} codes, above the limit of {max_items}")
    out = np.empty((len(codes), bits // 8), dtype=np.uint8)
    for i, code in enumerate(codes):
        if not isinstance(code, str) or not re.fullmatch(rf"[0-9a-fA-F]{{{bits // 4}}}", code):
            raise ServiceError(422, f"code {i} is not {bits // 4} hex digits ({bits} bits)")
        out[i] = np.frombuffer(bytes.fromhex(code), dtype=np.uint8)
    return out, [f"code {i}" for i in range(len(codes))], None


def codes_of_rows(index: SceneIndex, row_ids: object, max_items: int
                   ) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    if not isinstance(row_ids, list) or not row_ids or not all(
            is_int(r) and 0 <= r < 2**63 for r in row_ids):
        raise ServiceError(422, "row_ids must be a list of at least one row id (an integer "
                                "from 0 to 2^63 - 1)")
    if len(row_ids) > max_items:
        raise ServiceError(422, f"{len(row_ids)} row ids, above the limit of {max_items}")
    try:
        table = index.reader.metadata(np.array(row_ids, dtype=np.int64), ["code"])
    except ValueError as err:
        if isinstance(err, IndexStoreError):
            raise
        raise ServiceError(404, one_line(err)) from None
    codes = np.frombuffer(b"".join(table["code"].to_pylist()), dtype=np.uint8)
    ids = np.array(row_ids, dtype=np.int64)
    vectors = index.reader.vectors(ids) if index.reader.has_vectors else None
    return (codes.reshape(len(row_ids), index.bits // 8), [f"scene {r}" for r in row_ids],
            vectors)


def urls_of(urls: object, max_images: int) -> list[str]:
    if not isinstance(urls, list) or not urls or not all(
            isinstance(u, str) and u.strip() for u in urls):
        raise ServiceError(422, "urls must be a list of at least one path or URL")
    if len(urls) > max_images:
        raise ServiceError(422, f"{len(urls)} urls, above the limit of {max_images}")
    return urls


def fetch_all(urls: list[str], storage_options: dict | None, max_bytes: int) -> list[bytes]:
    """The bytes at each of ``urls`` (``{"urls"}`` queries): 413 for one above ``max_bytes``,
    422 naming the URL for one that cannot be read."""
    images = []
    for url in urls:
        try:
            fs, path = url_filesystem(url, storage_options)
            with fs.open(path, "rb") as f:
                data = f.read(max_bytes + 1)
        except Exception as err:  # fsspec and object-store clients raise their own types
            raise ServiceError(422, f"cannot read {describe(url, err)}") from None
        if len(data) > max_bytes:
            raise ServiceError(413, f"{url}: larger than the limit of {max_bytes} bytes")
        images.append(data)
    return images


async def uploads_of(request: Request, max_images: int) -> tuple[list[bytes], list[str]]:
    """The form's ``image`` files -> (their bytes, their file names)."""
    try:
        form = await request.form(max_files=max_images, max_fields=max_images)
    except HTTPException as err:  # Starlette's refusal of too many files or fields
        raise ServiceError(422, err.detail) from None
    files = [f for f in form.getlist("image") if not isinstance(f, str)]
    if not files:
        raise ServiceError(422, "no image: send one or more files in the form field 'image'")
    images, names = [], []
    for i, upload in enumerate(files):
        images.append(await upload.read())
        names.append(upload.filename or f"image {i}")
    await form.close()
    return images, names
