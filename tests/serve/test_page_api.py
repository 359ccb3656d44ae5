"""What the search page asks of the service, in-process: filters and paging of the hits
(server-side), hits as CSV and GeoJSON files, shareable ids of uploaded images, previews of
uploads (a TIFF too), and the page itself (Leaflet inlined, no outside request)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from conftest import GEO_FOLDERS, GEO_PER_FOLDER
from starlette.testclient import TestClient

from dahash_index.query.scene_index import SceneIndex
from dahash_index.serve import app as app_module
from dahash_index.serve.app import SERVE_ORIENTATIONS, ServiceSettings, create_app
from dahash_index.serve.hit_filters import HitFilters, page_of
from dahash_index.serve.requests import ServiceError

ALL = len(GEO_FOLDERS) * GEO_PER_FOLDER


@pytest.fixture(scope="module")
def client(geo_index) -> TestClient:
    return TestClient(create_app(SceneIndex.open(geo_index["index"]),
                                 ServiceSettings(basemap="https://tiles.example/{z}/{x}/{y}.png")))


def more_like(client: TestClient, params: str = "", row: int = 0) -> dict:
    answer = client.post(f"/query?top={ALL}&{params}", json={"row_ids": [row]})
    assert answer.status_code == 200, answer.text
    (first,) = answer.json()["queries"]
    return first


def test_filters_narrow_the_hits_found(client):
    every = more_like(client)
    assert every["total"] == len(every["hits"]) == ALL and every["offset"] == 0
    coast = more_like(client, "label=coast")
    assert coast["total"] == GEO_PER_FOLDER and {h["label"] for h in coast["hits"]} == {"coast"}
    zone = more_like(client, "crs=EPSG:32632")
    assert {h["label"] for h in zone["hits"]} == {"hills"}
    dated = more_like(client, "date_from=2021-06-11&date_to=2021-06-12")
    assert sorted(h["datetime"][:10] for h in dated["hits"]) == ["2021-06-11", "2021-06-12"]
    near = more_like(client, "max_distance=20")
    assert near["total"] == sum(h["distance"] <= 20 for h in every["hits"])
    # The box holds the footprints of the first two coast scenes only (2 km apart, 480 m wide).
    first = {h["url"].rsplit("/", 1)[-1]: h["wgs84"] for h in every["hits"]}
    a, b = first["coast0.tif"], first["coast1.tif"]
    box = f"{a['west'] - 1e-4},{a['south'] - 1e-4},{b['east'] + 1e-4},{b['north'] + 1e-4}"
    inside = more_like(client, f"bbox={box}")
    assert sorted(h["url"].rsplit("/", 1)[-1] for h in inside["hits"]) == [
        "coast0.tif", "coast1.tif"]


def test_pages_of_the_filtered_hits(client):
    every = more_like(client)["hits"]
    page = more_like(client, "offset=5&limit=4")
    assert page["total"] == ALL and page["offset"] == 5
    assert [h["row_id"] for h in page["hits"]] == [h["row_id"] for h in every[5:9]]
    assert more_like(client, f"offset={ALL}&limit=4")["hits"] == []


@pytest.mark.parametrize("params, message", [
    ("date_from=2021-6-1", "date_from must be a date YYYY-MM-DD, got '2021-6-1'"),
    ("bbox=1,2,3", "bbox must be WEST,SOUTH,EAST,NORTH in degrees, got '1,2,3'"),
    ("bbox=10,5,9,6", "bbox must be WEST,SOUTH,EAST,NORTH with west <= east"),
    ("max_distance=x", "max_distance must be a number of bits, got 'x'"),
    ("offset=-1", "offset must be 0 or more and limit 1 or more"),
    ("format=xml", "format must be one of json, csv, geojson, got 'xml'"),
])
def test_bad_filters_are_one_line(client, params, message):
    answer = client.post(f"/query?{params}", json={"row_ids": [0]})
    assert answer.status_code == 422 and answer.json()["error"].startswith(message)


def test_hits_as_files(client):
    answer = client.post(f"/query?top={ALL}&format=csv&label=hills", json={"row_ids": [0]})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert 'filename="hits.csv"' in answer.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(rows) == GEO_PER_FOLDER and {r["label"] for r in rows} == {"hills"}
    collection = client.post(f"/query?top={ALL}&format=geojson", json={"row_ids": [0]}).json()
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == ALL
    assert all(f["geometry"]["type"] == "Polygon" for f in collection["features"])


def test_an_uploaded_image_is_shared_by_its_id(client, geo_index):
    scene = geo_index["shards"] / "hills" / "hills2.tif"
    data = scene.read_bytes()
    first = client.post("/query?top=5", files=[("image", ("hills2.tif", data))])
    assert first.status_code == 200, first.text
    (answer,) = first.json()["queries"]
    again = client.post("/query?top=5", json={"image_ids": [answer["image_id"]]}).json()
    assert again["queries"][0]["hits"] == answer["hits"]
    assert again["queries"][0]["query"] == "hills2.tif"
    gone = client.post("/query", json={"image_ids": ["0123456789abcdef"]})
    assert gone.status_code == 404
    assert gone.json()["error"].startswith("image 0123456789abcdef is not held by this service")
    assert client.post("/query", json={"image_ids": "x"}).status_code == 422


def test_preview_of_a_tiff_upload_with_its_footprint(client, geo_index):
    scene = geo_index["shards"] / "coast" / "coast3.tif"
    preview = client.post("/preview", files=[("image", ("coast3.tif", scene.read_bytes()))])
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert body["thumbnail"].startswith("data:image/jpeg;base64,/9j/")
    hit = next(h for h in more_like(client)["hits"] if h["url"].endswith("coast3.tif"))
    assert body["wgs84"] == pytest.approx(hit["wgs84"])
    bad = client.post("/preview", files=[("image", ("x.tif", b"not a tiff"))])
    assert bad.status_code == 422 and bad.json()["error"].startswith("x.tif: ")


def test_the_page_carries_its_map_and_asks_no_other_server(client):
    page = client.get("/").text
    assert "<!-- leaflet" not in page and "L.map(" in page and ".leaflet-container" in page
    assert 'rel="icon" href="data:,"' in page  # no /favicon.ico request
    template = (Path(app_module.__file__).parent / "static" / "index.html").read_text()
    assert "http://" not in template and "https://" not in template  # no CDN, no tiles
    assert client.get("/info").json()["basemap"] == "https://tiles.example/{z}/{x}/{y}.png"
    assert client.get("/info").json()["orientations"] == SERVE_ORIENTATIONS


def test_hit_filters_by_hand():
    hits = [{"label": "a", "crs": "EPSG:1", "distance": 3, "datetime": "2020-01-02T00:00:00",
             "west": 0.0, "south": 0.0, "east": 1.0, "north": 1.0},
            {"label": "b", "crs": None, "distance": 9, "datetime": None,
             "west": None, "south": None, "east": None, "north": None}]
    assert not HitFilters()
    assert page_of(hits, HitFilters(), 1, None) == ([hits[1]], 2)
    assert page_of(hits, HitFilters(date_to="2020-01-02"), 0, 5) == ([hits[0]], 1)
    assert page_of(hits, HitFilters(bbox=(1.0, 1.0, 2.0, 2.0)), 0, 5) == ([hits[0]], 1)  # a corner
    assert page_of(hits, HitFilters(bbox=(1.5, 1.5, 2.0, 2.0)), 0, 5) == ([], 0)
    assert page_of(hits, HitFilters(max_distance=9, label="b"), 0, 5) == ([hits[1]], 1)
    with pytest.raises(ServiceError):
        HitFilters.from_params({"bbox": "0,0,1,100"})
    assert json.dumps(HitFilters.from_params({"label": "", "crs": "EPSG:1"}).crs) == '"EPSG:1"'
