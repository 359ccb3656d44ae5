"""The ``dahash-index serve`` command (registered by ``dahash_index.cli.main``)."""

from __future__ import annotations

from pathlib import Path

import click

from dahash_index.cli.options import mmap_flag, storage_flags, storage_options
from dahash_index.errors import one_line


@click.command(short_help="Serve an index over HTTP (JSON API).")
@click.option("--index", "index_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="The index [default: $DAHASH_INDEX_HOME/index].")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Refuse to start unless this is the index's model (checked by SHA-256).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but 127.0.0.1 exposes the service to a network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--token", envvar="DAHASH_INDEX_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' on every route "
                   "[env DAHASH_INDEX_TOKEN].")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=32,
              show_default=True, help="Largest request body.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Largest query image (width x height), from its header [default: the "
                   "build's limit, 50 million].")
@click.option("--nprobe", type=click.IntRange(min=1), default=None,
              help="IVF lists searched per query [default: the index's default].")
@mmap_flag
@click.option("--allow-url-queries", is_flag=True,
              help='Let POST /query take {"urls": [...]}: the service then reads any path or '
                   "URL it can reach for whoever may query it. Off by default.")
@click.option("--basemap", default=None, metavar="URL",
              help="Tiles under the page's map: an XYZ URL template such as "
                   "https://tile.openstreetmap.org/{z}/{x}/{y}.png (the browser fetches them "
                   "from there). Off by default: footprints are drawn on a blank map and the "
                   "page asks nothing of any other server.")
@click.option("--orientations", type=click.Choice(["1", "4", "8"]), default="1",
              show_default=True,
              help="Search with each uploaded image in this many orientations, one backbone "
                   "pass each (as query --orientations, whose default is 4, which finds a copy "
                   "turned by 90°: 4 backbone passes an upload instead of 1).")
@storage_flags
def serve(index_dir, model, host, port, token, max_upload_mb, max_pixels, nprobe, mmap,
          allow_url_queries, basemap, orientations, endpoint_url, storage_pairs):
    """Answer queries over HTTP from one index kept open, the model loaded once.

    \b
    Routes (JSON; errors are {"error": "..."}):
      GET  /healthz, /info          liveness; the index's summary
      GET  /scenes/ROW_ID           one scene's metadata
      GET  /scenes/ROW_ID/thumbnail?size=256   a JPEG of it (cached)
      POST /query?top=50            images (multipart field 'image', repeatable),
           /query?radius=R          {"codes": [hex, ...]}, {"row_ids": [...]},
                                    {"image_ids": [...]} (uploaded before), or
                                    {"urls": [...]} with --allow-url-queries;
                                    filters label=, crs=, date_from=, date_to=,
                                    max_distance=, bbox=W,S,E,N; offset=, limit=;
                                    format=csv|geojson for a file of the hits
      POST /preview                 an upload's thumbnail and footprint
      GET  /docs, /openapi.json     the API, as HTML and as OpenAPI 3.1

    Shards that a build commits while the service runs are searched within a second, without
    a restart. Thumbnails read the scenes where the index's metadata says they are (give
    --endpoint-url / --storage-option for an S3-compatible store).
    """
    import uvicorn

    from dahash_index.cli.options import default_index
    from dahash_index.query.scene_index import SceneIndex
    from dahash_index.scenes.scene import DEFAULT_MAX_PIXELS
    from dahash_index.serve.app import ServiceSettings, create_app

    index_dir = index_dir or default_index()
    try:
        index = SceneIndex.open(index_dir, model=model, mmap=mmap is not False, nprobe=nprobe,
                                reload="auto",
                                storage_options=storage_options(storage_pairs, endpoint_url))
    except (ValueError, OSError) as err:
        raise click.ClickException(one_line(err)) from err
    settings = ServiceSettings(token=token, max_upload_bytes=int(max_upload_mb * (1 << 20)),
                               max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                               allow_url_queries=allow_url_queries, basemap=basemap,
                               orientations=int(orientations))
    click.echo(f"serving {index_dir} ({index.row_count} rows) on http://{host}:{port}"
               f"{' (token required)' if token else ''}", err=True)
    uvicorn.run(create_app(index, settings), host=host, port=port, log_level="warning")
