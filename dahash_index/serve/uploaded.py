"""The codes of recently uploaded query images, by a content id: what makes a search by an
uploaded image shareable as a URL (``/?image=ID``) without the service keeping the image.

An id is the first 16 hex digits of the SHA-256 of the image's bytes and the bands and window
it was coded with. Ids outlive no restart, and the least recently used go first (a few MB in
all); a query by an id the service no longer holds gets 404 and asks for the upload again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dahash_index.lru import BytesLru
from dahash_index.serve.requests import ServiceError

UPLOADED_CACHE_BYTES = 4 << 20


@dataclass(frozen=True)
class UploadedQuery:
    """One image's codes uint8 (c, K/8) (c chips; 1 for a whole image), its re-rank vectors
    (c, D) float16 or None, and its file name."""

    codes: np.ndarray
    vectors: np.ndarray | None
    name: str

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + (0 if self.vectors is None else self.vectors.nbytes)


def image_id(data: bytes, bands: object, window: object) -> str:
    """The shareable id of an image coded with ``bands`` and ``window``."""
    digest = hashlib.sha256(data)
    digest.update(repr((bands, window)).encode())
    return digest.hexdigest()[:16]


class UploadedQueries:
    """Recently uploaded images' codes by id (see the module docstring)."""

    def __init__(self, budget: int = UPLOADED_CACHE_BYTES) -> None:
        self._cache: BytesLru[UploadedQuery] = BytesLru(budget, lambda q: q.nbytes + 200)

    def remember(self, ids: Sequence[str], names: Sequence[str], codes: np.ndarray,
                 owners: np.ndarray | None, vectors: np.ndarray | None) -> None:
        """Keep each image's codes (rows of ``codes`` whose ``owners`` entry is its number;
        row i for image i without owners)."""
        for i, (key, name) in enumerate(zip(ids, names, strict=True)):
            rows = np.flatnonzero(owners == i) if owners is not None else np.array([i])
            self._cache.put(key, UploadedQuery(codes[rows], None if vectors is None
                                               else vectors[rows], name))

    def recall(self, ids: object, max_items: int
               ) -> tuple[np.ndarray, list[str], np.ndarray | None, np.ndarray | None]:
        """{"image_ids": [ID, ...]}'s list -> (codes, names, owners or None, vectors or
        None), as an upload of those images gives them. 422 for a malformed list, 404 for an
        id this service does not hold (any more)."""
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise ServiceError(422, "image_ids must be a list of at least one image id")
        if len(ids) > max_items:
            raise ServiceError(422, f"{len(ids)} image ids, above the limit of {max_items}")
        found = []
        for key in ids:
            query = self._cache.get(key)
            if query is None:
                raise ServiceError(404, f"image {key} is not held by this service (any more): "
                                        "upload it again")
            found.append(query)
        codes = np.concatenate([q.codes for q in found])
        counts = [len(q.codes) for q in found]
        owners = (np.repeat(np.arange(len(found)), counts) if any(c != 1 for c in counts)
                  else None)
        vectors = (np.concatenate([q.vectors for q in found])
                   if all(q.vectors is not None for q in found) else None)
        return codes, [q.name for q in found], owners, vectors
