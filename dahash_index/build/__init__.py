"""Building an index: ``indexer.build_index`` lists and plans the shards (``stages``), lets an
engine (``engines``: ``local``, ``ray``) run the one shard worker (``worker``: read, decode in
``decode_pool``, encode through ``shard_stream``, stage), and commits each staged result.
``job`` holds the options and what every worker needs."""
