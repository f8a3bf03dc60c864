"""``imagerelay serve``: BCC's image API over HTTP (docs/serve.md)."""
