"""Querying a running service: ``dahash-index query --server URL``.

Each image is read here (path or URL) and sent in a request of its own, so that one bad
image fails alone, as in a local query; the service never fetches a URL given by a user.
Standard library only (urllib), so the command needs nothing the service does not.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any

from dahash_index.serve.scenes import hit_row

TIMEOUT_S = 300  # a cold service loads its model on the first image query


class ServiceUnreachable(OSError):
    """The service cannot be reached, or answered something that is not the API's JSON."""


def query_service(
    server: str,
    images: Sequence[tuple[str, bytes | None, str | None]],
    params: dict[str, Any],
    token: str | None = None,
) -> list[dict]:
    """Ask ``server`` for the hits of each image: (name, encoded bytes, or None and the
    error met reading it). params: top, radius, nprobe, bands, window, group_by (None values
    left out).

    Returns rows like ``SceneIndex.query``'s table rows (query, query_name, rank, distance,
    row_id, the metadata columns, error): the hits of each query, or one row with its error.
    """
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    endpoint = f"{server.rstrip('/')}/query" + (f"?{query}" if query else "")
    rows: list[dict] = []
    for number, (name, data, problem) in enumerate(images):
        if data is None:
            rows.append(_error_row(number, name, problem or "cannot be read"))
            continue
        # a local file goes by its absolute path, as the index names its scenes: the service
        # then puts the file itself first among hits tied with it, as a local query does
        sent = name if "://" in name else os.path.abspath(name)
        status, answer = _post_image(endpoint, sent, data, token)
        if status != 200:
            rows.append(_error_row(number, name, answer.get("error", f"HTTP {status}")))
            continue
        hits = answer["queries"][0]["hits"]
        rows += [{"query": number, "query_name": name, **hit_row(hit), "error": None}
                 for hit in hits]
    return rows


def _error_row(number: int, name: str, error: str) -> dict:
    return {"query": number, "query_name": name, "rank": None, "error": error}


def _post_image(endpoint: str, name: str, data: bytes, token: str | None
                ) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    filename = name.replace('"', "%22").replace("\r", "").replace("\n", "")
    body = b"".join([
        f"--{boundary}\r\n".encode(),
        f'Content-Disposition: form-data; name="image"; filename="{filename}"\r\n'.encode(),
        b"Content-Type: application/octet-stream\r\n\r\n", data,
        f"\r\n--{boundary}--\r\n".encode(),
    ])
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(endpoint, body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, _json(endpoint, response.read())
    except urllib.error.HTTPError as err:
        answer = _json(endpoint, err.read())
        if err.code == 401:  # the same for every image: stop here
            raise ServiceUnreachable(f"{endpoint}: {answer.get('error', 'unauthorized')} "
                                     "(set DAHASH_INDEX_TOKEN)") from None
        return err.code, answer
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ServiceUnreachable(f"{endpoint}: cannot reach the service ({reason})") from None


def _json(endpoint: str, payload: bytes) -> dict:
    try:
        answer = json.loads(payload)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ServiceUnreachable(f"{endpoint}: the answer is not the service's JSON")
    return answer
