"""Where the ``label`` of an indexed scene comes from (``build --label-from``).

- ``none``: no label (the default for a new index): most archives are not laid out by class,
  and a folder called ``geo`` would otherwise label every scene in it "geo".
- ``folder``: the name of the directory that holds the scene (``shards``' layout), as for
  ``DIR/<class>/<scene>`` archives such as UC Merced.
- a CSV file of ``url,label`` lines (an optional ``url,label`` header): a scene's key is its
  URL as the index stores it, or its path under the shards root (``beach/beach00.jpg``); a tar
  member's is the tar's followed by ``/`` and the member's name. Scenes not in the file get
  no label.

An index records its choice (``SceneLabels.recorded``, in the manifest's parameters) and a
later build of it must make the same one, so that no index mixes labels of two kinds.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dahash_index.errors import one_line

CHOICES = ("none", "folder")  # or the path of a CSV file


@dataclass(frozen=True)
class SceneLabels:
    """A build's labelling: ``source`` "none", "folder" or "csv" (``by_scene`` maps a scene's
    key to its label; ``digest``: the CSV's SHA-256, 12 hex digits)."""

    source: str = "none"
    by_scene: Mapping[str, str] = field(default_factory=dict)
    digest: str | None = None

    @property
    def recorded(self) -> str | None:
        """What the index's manifest records: None for folder labels (what every index made
        before this choice existed has), else "none" or "csv <digest>"."""
        if self.source == "folder":
            return None
        return "none" if self.source == "none" else f"csv {self.digest}"

    def label(self, url: str, member: str | None, folder: str | None, root: str) -> str | None:
        """The label of the scene at ``url`` (tar ``member``), whose folder label is
        ``folder``, read from under the shards ``root``."""
        if self.source == "folder":
            return folder
        if self.source == "none":
            return None
        key = f"{url}/{member}" if member else url
        found = self.by_scene.get(key)
        if found is None and key.startswith(root.rstrip("/") + "/"):
            found = self.by_scene.get(key[len(root.rstrip("/")) + 1:])
        return found


def labels_from(choice: str) -> SceneLabels:
    """``--label-from``'s value -> SceneLabels; a CSV file is read and checked here.

    Raises ValueError (one line, naming the file and line) for a value that is neither a
    choice nor a readable CSV of url,label lines, and for a scene given two labels."""
    if choice in CHOICES:
        return SceneLabels(choice)
    path = Path(choice)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"--label-from {choice}: neither {' nor '.join(CHOICES)} nor a "
                         f"readable CSV file ({one_line(err)})") from None
    try:
        lines = list(csv.reader(data.decode("utf-8-sig").splitlines()))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: not a UTF-8 CSV file ({one_line(err)})") from None
    by_scene: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line or (number == 1 and [c.strip().lower() for c in line] == ["url", "label"]):
            continue
        if len(line) != 2 or not line[0].strip():
            raise ValueError(f"{path}: line {number}: expected url,label, got {len(line)} "
                             f"field(s)" + ("" if len(line) != 2 else " and an empty url"))
        url, label = line[0].strip(), line[1].strip()
        if by_scene.setdefault(url, label) != label:
            raise ValueError(f"{path}: line {number}: {url} is labelled both "
                             f"{by_scene[url]!r} and {label!r}")
    if not by_scene:
        raise ValueError(f"{path}: no url,label lines")
    digest = hashlib.sha256(data).hexdigest()[:12]
    return SceneLabels("csv", {k: v for k, v in by_scene.items() if v}, digest)
