"""Where scenes come from: local paths and fsspec URLs (``remote``), shards of scenes and
their fingerprints (``shards``), and windows of large scenes read in place (``windows``)."""
