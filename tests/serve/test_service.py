"""Tests for the query service (dahash_index/service/): every route and every error with the app
in-process (Starlette's TestClient), and ``dahash-index serve`` as a user starts it."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from conftest import running_service
from helpers import assert_one_line_failure, encoded, free_port, save_scene
from PIL import Image
from starlette.testclient import TestClient

from dahash_index.columns import METADATA_COLUMNS
from dahash_index.model.orientations import DEFAULT_QUERY_ORIENTATIONS
from dahash_index.query.scene_index import EncodedQueries, SceneIndex
from dahash_index.serve import thumbnails as thumbnails_module
from dahash_index.serve.app import ServiceSettings, create_app
from dahash_index.serve.batching import EncodeBatcher
from dahash_index.serve.scenes import scene_json
from dahash_index.sources.remote import RemoteError
from dahash_index.sources.shards import read_scene

SCENES = {"a/s0.jpg": 0, "a/s1.jpg": 1, "a/s2.png": 2, "b/t0.jpg": 3, "b/t1.jpg": 4}


@pytest.fixture(scope="module")
def built(tmp_path_factory, quick_checkpoint, run_cli) -> dict:
    root = tmp_path_factory.mktemp("service")
    for rel, seed in SCENES.items():
        save_scene(root / "shards" / rel, seed)
    run_cli("build", "--shards", root / "shards", "--index", root / "index", "--model",
            quick_checkpoint, check=True)
    return {"index": root / "index", "shards": root / "shards", "model": quick_checkpoint}


@pytest.fixture(scope="module")
def index(built) -> SceneIndex:
    return SceneIndex.open(built["index"])


def client(index: SceneIndex, **settings) -> TestClient:
    return TestClient(create_app(index, ServiceSettings(**settings)))


def row_of(index: SceneIndex, name: str) -> int:
    urls = index.reader.metadata(None, ["row_id", "url"]).to_pylist()
    return next(r["row_id"] for r in urls if r["url"].endswith(name))


def built_shards(index: SceneIndex):
    return index.reader.path.parent / "shards"


def upload(*files: tuple[str, bytes]) -> dict:
    return {"files": [("image", (name, data)) for name, data in files]}


def test_healthz_and_info(index):
    c = client(index)
    assert c.get("/healthz").json() == {"ok": True, "rows": 5,
                                        "generation": index.reader.generation}
    info = c.get("/info").json()
    assert (info["rows"], info["shards"], info["bits"], info["kind"]) == (5, 2, 64, "flat")
    assert info["model_sha256"] == index.reader.model_sha256


def test_scene_and_its_refusals(index):
    c = client(index)
    row = row_of(index, "s1.jpg")
    got = c.get(f"/scenes/{row}")
    assert got.status_code == 200
    expected = scene_json(index.reader.metadata(np.array([row])).to_pylist()[0])
    assert got.json() == expected and got.json()["url"].endswith("a/s1.jpg")
    assert got.json()["width"] == 128 and got.json()["bounds"] is None
    for bad, status in (("5", 404), ("999999", 404), ("-1", 422), ("abc", 422),
                        ("1e3", 422), ("99999999999999999999", 422)):
        answer = c.get(f"/scenes/{bad}")
        assert answer.status_code == status, bad
        assert list(answer.json()) == ["error"] and "Traceback" not in answer.text


def test_query_by_images(index):
    c = client(index)
    # The indexed files themselves: each is at distance 0 from its own row (an untrained
    # model may put other scenes there too; ties come in row-id order).
    names = ("a/s1.jpg", "b/t0.jpg")
    files = [(f"q{i}{name[-4:]}", (built_shards(index) / name).read_bytes())
             for i, name in enumerate(names)]
    got = c.post("/query?top=5", **upload(*files))
    assert got.status_code == 200, got.text
    queries = got.json()["queries"]
    assert [q["query"] for q in queries] == ["q0.jpg", "q1.jpg"]
    for q, name in zip(queries, names, strict=True):
        assert [h["rank"] for h in q["hits"]] == [1, 2, 3, 4, 5]
        assert any(h["url"].endswith(name) for h in q["hits"] if h["distance"] == 0)
        keys = [(h["distance"], h["row_id"]) for h in q["hits"]]
        assert keys == sorted(keys)
    # The API gives what the Python API gives.
    table = index.query([files[0][1]], top=5)
    assert [h["row_id"] for h in queries[0]["hits"]] == table["row_id"].to_pylist()
    radius = c.post("/query?radius=64", **upload(files[0])).json()["queries"][0]["hits"]
    assert len(radius) == 5


def test_query_by_codes(index):
    c = client(index)
    row = row_of(index, "t1.jpg")
    code = index.reader.codes()[list(index.reader.row_ids()).index(row)]
    got = c.post("/query?top=5", json={"codes": [code.tobytes().hex()]})
    assert got.status_code == 200, got.text
    hits = got.json()["queries"][0]["hits"]
    assert got.json()["queries"][0]["query"] == "code 0"
    assert row in [h["row_id"] for h in hits if h["distance"] == 0]
    table = index.query_codes(code[None], top=5)
    assert [(h["row_id"], h["distance"]) for h in hits] == list(
        zip(table["row_id"].to_pylist(), table["distance"].to_pylist(), strict=True))


@pytest.mark.parametrize("body, needle", [
    ({"codes": ["zz" * 8]}, "code 0 is not 16 hex digits"),
    ({"codes": ["00" * 7]}, "code 0 is not 16 hex digits"),
    ({"codes": []}, "with at least one"),
    ({"code": ["00" * 8]}, "with at least one"),
    ([1, 2], "with at least one"),
])
def test_bad_codes(index, body, needle):
    got = client(index).post("/query", json=body)
    assert got.status_code == 422 and needle in got.json()["error"]


def test_bad_requests_get_one_json_line(index):
    c = client(index)
    for answer, needle in (
        (c.post("/query", content=b"{", headers={"content-type": "application/json"}),
         "not JSON"),
        (c.post("/query", content=b"x", headers={"content-type": "text/plain"}),
         "multipart/form-data"),
        (c.post("/query", data={"other": "1"}, files=[("x", ("a.jpg", b"1"))]), "no image"),
        (c.post("/query?top=1&radius=2", **upload(("a.jpg", encoded(0)))), "not both"),
        (c.post("/query?top=0", **upload(("a.jpg", encoded(0)))), "top must be 1 .. 1000"),
        (c.post("/query?top=x", **upload(("a.jpg", encoded(0)))), "top must be an integer"),
        (c.post("/query?radius=-1", **upload(("a.jpg", encoded(0)))), "radius"),
    ):
        assert answer.status_code == 422, (needle, answer.text)
        assert needle in answer.json()["error"]
    assert c.get("/nothing-here").status_code == 404
    assert c.get("/query").status_code == 405


def test_a_bad_image_is_named_and_refused(index):
    got = client(index).post("/query", **upload(("fine.jpg", encoded(0)),
                                                ("broken.jpg", b"\xff\xd8 not a jpeg")))
    assert got.status_code == 422
    message = got.json()["error"]
    assert message.startswith("broken.jpg") and "\n" not in message


def test_limits_on_bytes_and_pixels(index):
    big = encoded(0)
    got = client(index, max_upload_bytes=len(big) // 2).post("/query", **upload(("a.jpg", big)))
    assert got.status_code == 413 and "larger than the limit" in got.json()["error"]
    # A body without Content-Length is counted as it arrives.
    chunks = iter([b"--x\r\n", big])
    got = client(index, max_upload_bytes=len(big) // 2).post(
        "/query", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"})
    assert got.status_code == 413
    buf = io.BytesIO()
    Image.new("RGB", (300, 300)).save(buf, format="PNG")  # small file, 90,000 pixels
    got = client(index, max_pixels=10_000).post("/query", **upload(("bomb.png", buf.getvalue())))
    assert got.status_code == 413
    assert got.json()["error"] == ("bomb.png: image is 300 x 300 pixels, above the limit of "
                                   "10000")
    many = [(f"{i}.jpg", big) for i in range(3)]
    got = client(index, max_images=2).post("/query", **upload(*many))
    assert got.status_code == 422 and "Too many files" in got.json()["error"]


def test_token(index):
    c = client(index, token="s3cret")
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
        for answer in (c.get("/healthz", headers=headers), c.get("/scenes/0", headers=headers),
                       c.post("/query", headers=headers, **upload(("a.jpg", encoded(0))))):
            assert answer.status_code == 401 and "token" in answer.json()["error"]
    ok = {"Authorization": "Bearer s3cret"}
    assert c.get("/healthz", headers=ok).status_code == 200
    assert c.post("/query", headers=ok, **upload(("a.jpg", encoded(0)))).status_code == 200


def test_internal_errors_are_json_without_traceback(index, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    app = create_app(index)
    monkeypatch.setattr(index, "query_codes", boom)
    c = TestClient(app, raise_server_exceptions=False)
    got = c.post("/query", json={"codes": ["00" * 8]})
    assert got.status_code == 500
    assert got.json() == {"error": "internal error: disk on fire second line"}


def test_serve_command(built, cli_env, run_cli):
    env = {**cli_env, "DAHASH_INDEX_TOKEN": "tok"}
    with running_service(built["index"], env) as url:
        answer = httpx.get(f"{url}/healthz", headers={"Authorization": "Bearer tok"})
        assert answer.json()["rows"] == 5
        assert httpx.get(f"{url}/healthz").status_code == 401
        scene = (built["shards"] / "b/t1.jpg").read_bytes()
        got = httpx.post(f"{url}/query?top=5", headers={"Authorization": "Bearer tok"},
                         files=[("image", ("q.jpg", scene))], timeout=60)
        hits = got.json()["queries"][0]["hits"]
        assert any(h["url"].endswith("b/t1.jpg") for h in hits if h["distance"] == 0)
    # A model that is not the index's: refused in one line before serving.
    other = built["index"].parent / "other.pt"
    other.write_bytes(b"not a checkpoint")
    result = run_cli("serve", "--index", built["index"], "--model", other,
                     "--port", free_port(), timeout=60)
    assert_one_line_failure(result, str(built["index"]))


def test_thumbnails(built, monkeypatch):
    index = SceneIndex.open(built["index"])  # its own app: a fresh thumbnail cache
    c = client(index)
    reads = []
    real = thumbnails_module.read_scene

    def counted(url, member, storage_options=None):
        reads.append(url)
        return real(url, member, storage_options)

    monkeypatch.setattr(thumbnails_module, "read_scene", counted)
    row = row_of(index, "s2.png")
    got = c.get(f"/scenes/{row}/thumbnail?size=64")
    assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(got.content)).size == (64, 48)  # the scene is 128 x 96
    assert c.get(f"/scenes/{row}/thumbnail?size=64").content == got.content
    assert Image.open(io.BytesIO(c.get(f"/scenes/{row}/thumbnail").content)).size == (128, 96)
    assert len(reads) == 2  # size 64 once (then cached), the default size once
    for path, status in ((f"/scenes/{row}/thumbnail?size=8", 422),
                         (f"/scenes/{row}/thumbnail?size=2000", 422),
                         ("/scenes/77/thumbnail", 404),
                         # paths where a row id belongs: no route, or not a row id
                         ("/scenes/%2Fetc%2Fpasswd/thumbnail", (404, 422)),
                         ("/scenes/..%2F..%2Fetc/thumbnail", (404, 422))):
        answer = c.get(path)
        assert answer.status_code in (status if isinstance(status, tuple) else (status,)), path
        assert "error" in answer.json()
    assert len(reads) == 2  # nothing read for a refused request

    gone = row_of(index, "t0.jpg")
    url = index.reader.metadata(np.array([gone]), ["url"])["url"][0].as_py()
    moved = built["shards"] / "moved.jpg"
    Path(url).rename(moved)
    try:
        answer = c.get(f"/scenes/{gone}/thumbnail")
    finally:
        moved.rename(url)
    assert answer.status_code == 502
    assert answer.json()["error"].startswith(f"scene {gone} cannot be shown: ")
    assert url in answer.json()["error"]


def test_read_scene_from_a_tar_member(tmp_path):
    tar = tmp_path / "shard.tar"
    with tarfile.open(tar, "w") as tf:
        for name, seed in (("x/a.jpg", 0), ("x/b.jpg", 1)):
            data = encoded(seed)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert read_scene(str(tar), "x/b.jpg") == encoded(1)
    with pytest.raises(FileNotFoundError, match="holds no scene 'x/c.jpg'"):
        read_scene(str(tar), "x/c.jpg")
    with pytest.raises(RemoteError, match="nope.tar"):
        read_scene(str(tmp_path / "nope.tar"), "x/a.jpg")
    assert read_scene(str(tmp_path / "shard.tar"), None) == tar.read_bytes()


def test_query_through_the_service_prints_what_a_local_query_prints(built, cli_env, run_cli):
    # The service searches an upload in query's default orientations when told to.
    with running_service(built["index"], cli_env, "--orientations",
                         str(DEFAULT_QUERY_ORIENTATIONS)) as url:
        broken = built["index"].parent / "broken.jpg"
        broken.write_bytes(b"\xff\xd8 not a jpeg")
        images = [built["shards"] / "a/s0.jpg", built["shards"] / "b/t1.jpg"]
        for extra in ([], ["--json"], ["--radius", "64"]):
            local = run_cli("query", *images, "--index", built["index"], "--top", "3", *extra
                            ) if "--radius" not in extra else run_cli(
                "query", *images, "--index", built["index"], *extra)
            remote = run_cli("query", *images, "--server", url,
                             *(["--top", "3"] if "--radius" not in extra else []), *extra)
            assert (remote.returncode, remote.stdout) == (0, local.stdout) and local.stdout
        local = run_cli("query", images[0], broken, "--index", built["index"], "--top", "2")
        remote = run_cli("query", images[0], broken, "--server", url, "--top", "2")
        assert local.returncode == remote.returncode == 1
        assert remote.stdout == local.stdout
        assert remote.stderr.count("Error:") == 1 and str(broken) in remote.stderr
        refused = run_cli("query", images[0], "--server", url, "--orientations", "1")
        assert refused.returncode == 2 and "--orientations" in refused.stderr  # serve's own
        gone = run_cli("query", images[0], "--server", f"http://127.0.0.1:{free_port()}")
        assert_one_line_failure(gone, "cannot reach the service")


def test_more_like_a_row_page_and_docs(index):
    c = client(index, token="t")
    auth = {"Authorization": "Bearer t"}
    row = row_of(index, "t1.jpg")
    got = c.post("/query?top=5", json={"row_ids": [row]}, headers=auth)
    assert got.status_code == 200, got.text
    code = index.reader.metadata(np.array([row]), ["code"])["code"][0].as_py()
    by_code = c.post("/query?top=5", json={"codes": [code.hex()]}, headers=auth).json()
    assert got.json()["queries"][0]["hits"] == by_code["queries"][0]["hits"]
    assert got.json()["queries"][0]["query"] == f"scene {row}"
    for body, status in (({"row_ids": [999]}, 404), ({"row_ids": []}, 422),
                         ({"row_ids": [-1]}, 422), ({"row_ids": ["1"]}, 422),
                         ({"row_ids": [True]}, 422)):
        answer = c.post("/query", json=body, headers=auth)
        assert answer.status_code == status, body
    # The page: with the header, or ?token= (only the page takes it there).
    assert c.get("/").status_code == 401
    page = c.get("/?token=t")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<script>" in page.text and "/query?" in page.text
    assert c.get("/", headers=auth).status_code == 200
    assert c.get("/healthz?token=t").status_code == 401
    docs = c.get("/docs", headers=auth)
    assert docs.status_code == 200 and "/scenes/{row_id}/thumbnail" in docs.text


def test_openapi_documents_every_route(index):
    app = create_app(index, ServiceSettings())
    schema = TestClient(app).get("/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    routes = {(r.path, m.lower()) for r in app.routes for m in r.methods if m != "HEAD"}
    documented = {(p, m) for p, ops in schema["paths"].items() for m in ops}
    assert documented == routes
    for ops in schema["paths"].values():  # every answer has a description
        for op in ops.values():
            assert op["summary"] and all(r["description"] for r in op["responses"].values())
    assert {"Error", "Scene", "Hit", "Answer"} <= set(schema["components"]["schemas"])
    docs = TestClient(app).get("/docs").text
    assert all(f"{m.upper()} {p}" in docs for p, m in routes)
    assert "<script" not in docs and "openapi.json" in docs


def test_url_queries_only_when_allowed(index, tmp_path):
    scene = built_shards(index) / "b" / "t0.jpg"
    body = {"urls": [str(scene)]}
    off = client(index).post("/query?top=3", json=body)
    assert off.status_code == 403 and "--allow-url-queries" in off.json()["error"]
    c = client(index, allow_url_queries=True, max_upload_bytes=1 << 20)
    got = c.post("/query?top=3", json=body)
    assert got.status_code == 200, got.text
    answer = got.json()["queries"][0]
    assert answer["query"] == str(scene)
    by_upload = c.post("/query?top=3", **upload(("t0.jpg", scene.read_bytes()))).json()
    assert answer["hits"] == by_upload["queries"][0]["hits"]
    missing = c.post("/query", json={"urls": [str(tmp_path / "nope.jpg")]})
    assert missing.status_code == 422 and "nope.jpg" in missing.json()["error"]
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + bytes(2 << 20))
    too_big = c.post("/query", json={"urls": [str(big)]})
    assert too_big.status_code == 413 and "big.jpg" in too_big.json()["error"]
    for bad in ([], [""], "x", [1]):
        answer = c.post("/query", json={"urls": bad})
        assert answer.status_code == 422 and "urls must be" in answer.json()["error"]


class SlowEncoder:
    """A stand-in SceneIndex.encode_chips: one call per batch, slow enough for requests to
    pile up; an image b"bad" fails, as a bad upload does; an image of two bytes gives two
    codes (a large image cut into chips)."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.orientations: list[int] = []

    def encode_chips(self, images, bands, batch_size, max_pixels, window, orientations):
        self.calls.append(len(images))
        self.orientations.append(orientations)
        time.sleep(0.2)
        names = [f"bytes {i}" for i in range(len(images))]
        errors = [f"bytes {i}: not an image" if data == b"bad" else None
                  for i, data in enumerate(images)]
        owners = [i for i, data in enumerate(images) if data != b"bad" for _ in data]
        codes = np.array([[b] for data in images if data != b"bad" for b in data], np.uint8)
        return EncodedQueries(codes.reshape(-1, 1), np.array(owners, np.int64), names, errors)


def test_concurrent_uploads_are_encoded_together():
    encoder = SlowEncoder()
    batcher = EncodeBatcher(encoder, window=0.05, max_images=64, orientations=8)
    jobs = [[bytes([k]), b"bad"] if k == 3 else [bytes([k])] * (1 + k % 2) for k in range(8)]
    jobs[4] = [bytes([4, 40]), bytes([41])]  # two chips, then one
    results: dict[int, tuple] = {}

    def request(k: int) -> None:
        names = [f"r{k}-{i}" for i in range(len(jobs[k]))]
        results[k] = batcher.encode(jobs[k], names, None, 100)

    threads = [threading.Thread(target=request, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(encoder.calls) < 8 and sum(encoder.calls) == sum(map(len, jobs))
    assert set(encoder.orientations) == {8}  # the service's, for every batch
    for k, (codes, owners, errors, vectors) in results.items():
        assert vectors is None  # a model without re-rank vectors
        good = [(i, data) for i, data in enumerate(jobs[k]) if data != b"bad"]
        assert codes.ravel().tolist() == [b for _, data in good for b in data]
        assert owners.tolist() == [i for i, data in good for _ in data]
        if k == 3:
            assert errors == [None, "r3-1: not an image"]
        else:
            assert errors == [None] * len(jobs[k])


def test_client_columns_are_the_metadata_schema():
    from dahash_index.store import METADATA_SCHEMA

    assert METADATA_COLUMNS == tuple(METADATA_SCHEMA.names)


def test_query_server_imports_neither_torch_nor_faiss_nor_pyarrow():
    code = ("import sys, dahash_index.cli.main, dahash_index.serve.client, "
            "dahash_index.sources.remote; "
            "print(sorted(m for m in ('torch', 'faiss', 'pyarrow', 'rasterio') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_a_local_jpeg_query_imports_no_torchvision_pandas_or_rasterio(built):
    """A new process's query pays for no import it does not need (the cold query's time):
    torchvision pulls in torch._dynamo, pyarrow's pa.array imports pandas, and rasterio is
    for TIFFs only."""
    code = ("import sys; from dahash_index.cli.main import main; "
            "from dahash_index.query.scene_index import SceneIndex; "
            f" t = SceneIndex.open({str(built['index'])!r}).query("
            f"[{str(built['shards'] / 'a' / 's0.jpg')!r}], top=3); assert t.num_rows == 3; "
            "t.to_pylist(); print(sorted(m for m in ('torchvision', 'pandas', 'rasterio') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
