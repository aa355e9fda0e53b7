"""The shared TLS context: made once per process, and it still verifies certificates and host names."""

from __future__ import annotations

import ssl

from sunday_release.registry import RegistryClient
from sunday_release.tls import tls_context


def test_one_context_per_process_that_verifies() -> None:
    ctx = tls_context()
    assert ctx is tls_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is True
    assert ctx.get_ca_certs() or ctx.cert_store_stats()["x509_ca"] > 0  # a CA bundle was loaded


def test_a_registry_client_of_an_https_registry_uses_it() -> None:
    with RegistryClient("ghcr.io", tag_lock=lambda *a: None) as client:  # type: ignore[arg-type,return-value]
        pool = client._http._transport._pool  # type: ignore[attr-defined]
        assert pool._ssl_context is tls_context()
