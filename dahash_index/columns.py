"""The scene metadata columns, by name: what a part holds beside each code
(``store.layout.METADATA_SCHEMA`` gives their types), what the service's JSON groups and what
the CLI prints. Plain names, no pyarrow: ``query --server`` prints hits without it."""

METADATA_COLUMNS = (
    "url", "shard", "member", "width", "height", "bands", "dtype", "label", "crs",
    "left", "bottom", "right", "top", "west", "south", "east", "north",
    "pixel_size_x", "pixel_size_y", "datetime",
    "col_off", "row_off", "window_width", "window_height", "item_id", "properties",
)
BOUNDS_COLUMNS = ("left", "bottom", "right", "top")  # in the scene's CRS
WGS84_COLUMNS = ("west", "south", "east", "north")  # degrees
# A chip's pixel window in its scene (``build --tile``); null for a whole scene.
WINDOW_COLUMNS = ("col_off", "row_off", "window_width", "window_height")
# A scene read from a STAC catalog (``build --stac``): its item's id and properties (JSON);
# null for scenes from files.
STAC_COLUMNS = ("item_id", "properties")
# Columns added after format 2: a part or lookup file without them reads them as nulls.
LATER_COLUMNS = WINDOW_COLUMNS + STAC_COLUMNS
