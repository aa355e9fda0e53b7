"""One verifying TLS context per process, for every HTTP client the pipeline makes.

httpx builds a new context for each client, even one that only ever speaks plain HTTP, and building one reads the
whole CA bundle: about 20 ms of CPU here. A CI opened a registry client per task and a deploy a client per health
probe, so that was most of a second of every run's CPU. The context verifies certificates exactly as httpx's own
default does (SSL_CERT_FILE, SSL_CERT_DIR, else certifi's bundle).
"""

from __future__ import annotations

import functools
import ssl

import httpx

__all__ = ["tls_context"]


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default verifying context, made once (an SSLContext may be shared by threads and clients)."""
    return httpx.create_ssl_context()
