"""Scene pixels from encoded bytes: JPEG/PNG/TIFF decoding (``decode``, ``geotiff``), JPEG
batches on the GPU (``device_jpeg``), and the grid of chips of large scenes (``chips``).

Nothing here reads storage: bytes and open datasets come from ``sources``."""
