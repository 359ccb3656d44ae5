"""The query service: ``dahash-index serve``, an HTTP API over one opened index.

``app.create_app`` builds the ASGI app (Starlette) around a ``SceneIndex`` that stays open,
with its model loaded once and new commits picked up by ``reload="auto"``; ``cli`` holds the
command, which runs it on uvicorn; ``client`` is ``dahash-index query --server``. ``scenes``
turns result rows into the API's JSON, ``thumbnails`` renders scenes, ``batching`` encodes
concurrent uploads together. Nothing is imported here: the command line imports ``cli`` and
``client`` without torch.
"""
