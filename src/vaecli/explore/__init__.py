"""`vae explore`: a local latent-space explorer. :mod:`.service` holds the runs and the
latent/image work, :mod:`.server` the HTTP server over it."""

from __future__ import annotations

from .server import DRAIN_LIMIT, MAX_JSON_BYTES, ExploreServer, is_loopback, make_server, page_html
from .service import CLASS_NAMES, FASHION_CLASSES, MAX_UPLOAD_BYTES, BadRequest, Explorer, ExploreRun, parse_z

__all__ = [
    "BadRequest",
    "CLASS_NAMES",
    "DRAIN_LIMIT",
    "ExploreRun",
    "ExploreServer",
    "Explorer",
    "FASHION_CLASSES",
    "MAX_JSON_BYTES",
    "MAX_UPLOAD_BYTES",
    "is_loopback",
    "make_server",
    "page_html",
    "parse_z",
]
