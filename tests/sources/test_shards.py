"""Tests for dahash_index.sources.shards: listing shards and streaming their scene bytes."""

from __future__ import annotations

import io
import os
import tarfile
import uuid

import fsspec
import pytest
from helpers import DATASETS

from dahash_index.sources.shards import SceneBytes, SceneError, Shard, ShardReader

MEM = fsspec.filesystem("memory")  # one process-wide store: every test uses its own root

# A layout exercising every rule: two dir shards (one nested), root loose files, a tar
# shard, and things to skip (sidecars, README, hidden files/dirs, reserved _dahash).
TREE = {
    "agricultural/agricultural00.jpg": b"ag0",
    "agricultural/agricultural01.JPG": b"ag1",
    "agricultural/agricultural00.json": b"{}",
    "agricultural/.DS_Store": b"junk",
    "agricultural/.thumbs/agricultural00.jpg": b"hidden",
    "region1/airplane/a0.tif": b"r1a0",
    "region1/beach/deep/b0.png": b"r1b0",
    "region1/r1-top.tiff": b"r1top",
    "loose-b.jpeg": b"lb",
    "loose-a.png": b"la",
    "README.md": b"# readme",
    ".hidden.jpg": b"hidden",
    ".cache/x.jpg": b"hidden",
    "_dahash/manifest.jpg": b"reserved",
}


def tar_bytes(members: list[tuple[str, bytes] | tarfile.TarInfo], gz: bool = False) -> bytes:
    """A tar of (name, data) regular files and prepared TarInfo entries (links, devices)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


GOOD_TAR = [
    ("airplane/airplane00.jpg", b"air0"),
    ("./airplane/airplane01.jpg", b"air1"),
    ("airplane/airplane00.txt", b"caption"),
    ("airplane/._airplane00.jpg", b"appledouble"),
    ("top.png", b"top"),
]


def good_tar() -> bytes:
    return tar_bytes([special("beach", tarfile.DIRTYPE), *GOOD_TAR])


def write_tree(fs: fsspec.AbstractFileSystem, root: str, extra: dict[str, bytes]) -> None:
    for rel, data in {**TREE, **extra}.items():
        fs.makedirs(f"{root}/{rel}".rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(f"{root}/{rel}", data)


@pytest.fixture
def mem_url():
    """A fresh memory:// shards URL holding TREE plus part-0001.tar; removed afterwards."""
    url = f"memory://shards-{uuid.uuid4().hex}"
    write_tree(MEM, url, {"part-0001.tar": good_tar()})
    yield url
    MEM.rm(url, recursive=True)


def scenes(reader: ShardReader, name: str) -> list[SceneBytes | SceneError]:
    (shard,) = [s for s in reader.list_shards() if s.name == name]
    return list(reader.iter_scenes(shard))


def summary(items) -> list[tuple]:
    return [
        (x.member, x.label, x.data) if isinstance(x, SceneBytes) else (x.member, x.reason)
        for x in items
    ]


# --- listing -------------------------------------------------------------------------


def test_list_shards_sorted_with_kinds_and_urls(mem_url):
    shards = ShardReader(mem_url).list_shards()
    assert shards == [
        Shard(".", mem_url, "root"),
        Shard("agricultural", f"{mem_url}/agricultural", "dir"),
        Shard("part-0001.tar", f"{mem_url}/part-0001.tar", "tar"),
        Shard("region1", f"{mem_url}/region1", "dir"),
    ]
    assert ShardReader(mem_url + "/").list_shards() == shards  # trailing slash is the same


def test_no_root_shard_without_loose_scenes(mem_url):
    for rel in ("loose-a.png", "loose-b.jpeg"):
        MEM.rm(f"{mem_url}/{rel}")
    assert [s.name for s in ShardReader(mem_url).list_shards()] == [
        "agricultural",
        "part-0001.tar",
        "region1",
    ]


@pytest.mark.parametrize("suffix", ["/nope", "/README.md"])
def test_missing_or_file_url_is_file_not_found(mem_url, suffix):
    with pytest.raises(FileNotFoundError, match="^shards URL (not found|is not a directory): "):
        ShardReader(mem_url + suffix)
    with pytest.raises(FileNotFoundError, match=f"{mem_url}{suffix}$"):
        ShardReader(mem_url + suffix)


# --- dir and root shards -------------------------------------------------------------


def test_dir_shard_sorted_with_labels_skipping_hidden_and_sidecars(mem_url):
    reader = ShardReader(mem_url)
    items = scenes(reader, "agricultural")
    base = f"{mem_url}/agricultural"
    assert [(x.url, x.shard, x.member, x.label, x.data) for x in items] == [
        (f"{base}/agricultural00.jpg", "agricultural", None, "agricultural", b"ag0"),
        (f"{base}/agricultural01.JPG", "agricultural", None, "agricultural", b"ag1"),
    ]


def test_nested_dirs_belong_to_the_shard_labelled_by_their_own_directory(mem_url):
    items = scenes(ShardReader(mem_url), "region1")
    assert [(x.url.removeprefix(mem_url), x.label, x.data) for x in items] == [
        ("/region1/airplane/a0.tif", "airplane", b"r1a0"),
        ("/region1/beach/deep/b0.png", "deep", b"r1b0"),
        ("/region1/r1-top.tiff", "region1", b"r1top"),
    ]


def test_root_shard_has_loose_scenes_without_label(mem_url):
    items = scenes(ShardReader(mem_url), ".")
    assert [(x.url, x.shard, x.label, x.data) for x in items] == [
        (f"{mem_url}/loose-a.png", ".", None, b"la"),
        (f"{mem_url}/loose-b.jpeg", ".", None, b"lb"),
    ]


def test_count_matches_iteration_and_is_deterministic(mem_url):
    reader = ShardReader(mem_url)
    for shard in reader.list_shards():
        first = list(reader.iter_scenes(shard))
        assert reader.count_scenes(shard) == len(first) > 0
        assert list(reader.iter_scenes(shard)) == first


def test_unreadable_file_is_an_error_and_iteration_continues(mem_url, monkeypatch):
    reader = ShardReader(mem_url)
    real = reader.fs.cat_file

    def flaky(path, *args, **kwargs):
        if path.endswith("agricultural00.jpg"):
            raise PermissionError(13, "Permission denied", path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(reader.fs, "cat_file", flaky)
    first, second = scenes(reader, "agricultural")
    assert isinstance(first, SceneError)
    assert first.url == f"{mem_url}/agricultural/agricultural00.jpg" and first.member is None
    assert first.reason.startswith("cannot read file: PermissionError: ")
    assert "\n" not in first.reason
    assert isinstance(second, SceneBytes) and second.data == b"ag1"


# --- tar shards ----------------------------------------------------------------------


def test_tar_shard_members_labels_and_order(mem_url):
    items = scenes(ShardReader(mem_url), "part-0001.tar")
    assert all(isinstance(x, SceneBytes) for x in items)
    assert {(x.url, x.shard) for x in items} == {(f"{mem_url}/part-0001.tar", "part-0001.tar")}
    assert summary(items) == [  # archive order; '.txt' sidecar and '._' file skipped
        ("airplane/airplane00.jpg", "airplane", b"air0"),
        ("./airplane/airplane01.jpg", "airplane", b"air1"),
        ("top.png", None, b"top"),
    ]


def test_gzipped_tar_shard(mem_url):
    MEM.pipe_file(f"{mem_url}/part-0002.tar.gz", tar_bytes(GOOD_TAR[:2], gz=True))
    reader = ShardReader(mem_url)
    assert [x.data for x in scenes(reader, "part-0002.tar.gz")] == [b"air0", b"air1"]


def unsafe_tar() -> bytes:
    return tar_bytes(
        [
            ("good/a.jpg", b"a"),
            ("../x", b"escape"),
            ("/etc/passwd", b"root:x:0:0"),
            ("good/../../evil.jpg", b"evil"),
            special("good/sym.jpg", tarfile.SYMTYPE, "/etc/passwd"),
            special("good/hard.jpg", tarfile.LNKTYPE, "good/a.jpg"),
            special("good/dev.jpg", tarfile.CHRTYPE),
            special("good/fifo.jpg", tarfile.FIFOTYPE),
            ("good/b.jpg", b"b"),
        ]
    )


def test_unsafe_tar_members_are_errors_and_never_read(mem_url):
    MEM.pipe_file(f"{mem_url}/unsafe.tar", unsafe_tar())
    reader = ShardReader(mem_url)
    items = scenes(reader, "unsafe.tar")
    assert summary(items) == [
        ("good/a.jpg", "good", b"a"),
        ("../x", "tar member name escapes the shard: ../x"),
        ("/etc/passwd", "tar member name escapes the shard: /etc/passwd"),
        ("good/../../evil.jpg", "tar member name escapes the shard: good/../../evil.jpg"),
        ("good/sym.jpg", "tar member is a link: good/sym.jpg -> /etc/passwd"),
        ("good/hard.jpg", "tar member is a link: good/hard.jpg -> good/a.jpg"),
        ("good/dev.jpg", "tar member is not a regular file (device or FIFO): good/dev.jpg"),
        ("good/fifo.jpg", "tar member is not a regular file (device or FIFO): good/fifo.jpg"),
        ("good/b.jpg", "good", b"b"),
    ]
    assert all(x.url == f"{mem_url}/unsafe.tar" for x in items)
    assert reader.count_scenes(Shard("unsafe.tar", f"{mem_url}/unsafe.tar", "tar")) == 9


def corrupt_tars() -> dict[str, bytes]:
    good = tar_bytes([("a/one.jpg", b"1" * 600), ("a/two.jpg", b"2" * 600)])
    second_header = 512 + 1024  # header + 600 bytes padded to 1024
    broken_header = good[:second_header] + b"\xff" * 512 + good[second_header + 512 :]
    return {
        "garbage.tar": b"this is not a tar archive at all\n" * 40,
        "cut-in-data.tar": good[: second_header + 512 + 100],
        "cut-in-header.tar": good[: second_header + 100],
        "bad-header.tar": broken_header,
    }


@pytest.mark.parametrize(
    "name,before,where",
    [
        ("garbage.tar", [], "at the start"),
        # 'after' names the last member read whole: here a/two.jpg's data is cut.
        ("cut-in-data.tar", [b"1" * 600], "after member 'a/one.jpg'"),
        ("cut-in-header.tar", [b"1" * 600], "after member 'a/one.jpg'"),
        ("bad-header.tar", [b"1" * 600], "after member 'a/one.jpg'"),
    ],
)
def test_corrupt_tar_yields_one_error_for_the_rest(mem_url, name, before, where):
    MEM.pipe_file(f"{mem_url}/{name}", corrupt_tars()[name])
    reader = ShardReader(mem_url)
    *good, last = scenes(reader, name)
    assert [x.data for x in good] == before
    assert isinstance(last, SceneError) and last.member is None
    assert last.reason.startswith(f"truncated or corrupt tar {where}, rest of shard skipped: ")
    assert "\n" not in last.reason
    assert reader.count_scenes(Shard(name, f"{mem_url}/{name}", "tar")) >= len(before)


# --- local paths ---------------------------------------------------------------------


@pytest.fixture
def local_tree(tmp_path):
    root = tmp_path / "shards"
    write_tree(fsspec.filesystem("file"), str(root), {"part-0001.tar": good_tar()})
    return root


def test_local_paths_absolute_relative_and_file_url(local_tree, monkeypatch):
    monkeypatch.chdir(local_tree.parent)
    readers = [
        ShardReader(str(local_tree)),
        ShardReader("shards"),
        ShardReader(f"file://{local_tree}"),
    ]
    want = None
    for reader in readers:
        shards = reader.list_shards()
        assert [s.name for s in shards] == [".", "agricultural", "part-0001.tar", "region1"]
        assert shards[1].url == str(local_tree / "agricultural")  # plain absolute path
        got = [summary(reader.iter_scenes(s)) for s in shards]
        urls = [x.url for s in shards for x in reader.iter_scenes(s)]
        assert all(u.startswith(str(local_tree) + "/") for u in urls if not u.endswith(".tar"))
        want = want or got
        assert got == want
    assert ("./airplane/airplane01.jpg", "airplane", b"air1") in want[2]


def test_local_dangling_symlink_is_an_error(local_tree):
    os.symlink(local_tree / "nowhere.jpg", local_tree / "agricultural" / "agricultural02.jpg")
    items = scenes(ShardReader(str(local_tree)), "agricultural")
    assert [type(x).__name__ for x in items] == ["SceneBytes", "SceneBytes", "SceneError"]
    assert items[2].reason.startswith("cannot read file: FileNotFoundError")


def test_local_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="shards URL not found: .*missing$"):
        ShardReader(str(tmp_path / "missing"))


# --- S3 through moto -----------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    server_mod = pytest.importorskip("moto.server", reason="moto[server] not installed")
    boto3 = pytest.importorskip("boto3")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket="scenes")
    for rel, data in {**TREE, "part-0001.tar": good_tar()}.items():
        client.put_object(Bucket="scenes", Key=f"archive/{rel}", Body=data)
    yield endpoint
    server.stop()


def test_s3_bucket_prefix(s3_endpoint):
    options = {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": s3_endpoint,
        "client_kwargs": {"region_name": "us-east-1"},
        "skip_instance_cache": True,
    }
    reader = ShardReader("s3://scenes/archive", storage_options=options)
    shards = reader.list_shards()
    assert [(s.name, s.kind) for s in shards] == [
        (".", "root"),
        ("agricultural", "dir"),
        ("part-0001.tar", "tar"),
        ("region1", "dir"),
    ]
    assert shards[2].url == "s3://scenes/archive/part-0001.tar"
    region = list(reader.iter_scenes(shards[3]))
    assert [(x.url, x.label) for x in region][0] == (
        "s3://scenes/archive/region1/airplane/a0.tif",
        "airplane",
    )
    assert [x.data for x in reader.iter_scenes(shards[2])] == [b"air0", b"air1", b"top"]
    assert reader.count_scenes(shards[1]) == 2
    with pytest.raises(FileNotFoundError, match="^shards URL not found: s3://scenes/nothing$"):
        ShardReader("s3://scenes/nothing", storage_options=options)


# --- real data -----------------------------------------------------------------------


@pytest.mark.realdata
def test_ucmerced_layout():
    reader = ShardReader(str(DATASETS / "ucmerced"))
    shards = reader.list_shards()
    assert len(shards) == 21 and all(s.kind == "dir" for s in shards)
    agri = shards[0]
    assert agri.name == "agricultural" and reader.count_scenes(agri) == 100
    first = next(iter(reader.iter_scenes(agri)))
    assert first.label == "agricultural" and first.url.endswith("agricultural/agricultural00.jpg")
