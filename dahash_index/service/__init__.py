"""The query service: ``dahash-index serve``, an HTTP API over one opened index.

``app.create_app`` builds the ASGI app (Starlette) around a ``SceneIndex`` that stays open,
with its model loaded once and new commits picked up by ``reload="auto"``; ``cli`` holds the
command, which runs it on uvicorn. ``scenes`` turns result rows into the API's JSON.
"""

from dahash_index.service.app import ServiceSettings, create_app

__all__ = ["ServiceSettings", "create_app"]
