"""Answering queries: ``SceneIndex`` (open an index once, query many images or codes in one
call) and the loading of query inputs (``inputs``)."""
