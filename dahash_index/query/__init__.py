"""Answering queries: ``SceneIndex`` (open an index once, query many images or codes in one
call), the ranking of hits (``ranking``: Hamming distance, then the re-rank vectors) and the
loading of query inputs (``inputs``)."""


def __getattr__(name: str):
    # SceneIndex imports FAISS and torch: only when asked for, so that ``query.inputs`` stays
    # light for the --server client.
    if name == "SceneIndex":
        from dahash_index.query.scene_index import SceneIndex

        return SceneIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
