"""``imagerelay serve``: BCC's image API over HTTP (docs/serve.md).

``Service(cloud, ServeOptions(...)).app(region, host, port)`` is one region's endpoint as an
ASGI application (``host``/``port``: where its listener is bound, so that requests signed for
another region's listener are refused); ``command.serve`` runs one uvicorn listener per
region.
"""

from __future__ import annotations

from .app import ServeOptions as ServeOptions
from .app import Service as Service
