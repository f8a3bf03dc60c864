"""``imagerelay serve``: BCC's image API over HTTP (docs/serve.md).

``Service(cloud, ServeOptions(...)).app(region)`` is one region's endpoint as an ASGI
application; ``command.serve`` runs one uvicorn listener per region.
"""

from __future__ import annotations

from .app import ServeOptions as ServeOptions
from .app import Service as Service
