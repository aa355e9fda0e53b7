"""Secrets from the run's Prefect server: the reader the flows give a target for its database URL."""

from __future__ import annotations

from prefect.blocks.system import Secret
from pydantic import SecretStr

from sunday_release.errors import PipelineError

__all__ = ["read_secret_block"]


def read_secret_block(name: str) -> SecretStr:
    """The value of the Prefect Secret block `name` (on the run's Prefect server), kept secret."""
    try:  # `_sync` (async_dispatch): the sync path even when called from async code
        block = Secret.load(name, _sync=True)  # type: ignore[call-arg]
    except ValueError:  # Prefect's answer to a missing block document
        raise PipelineError(f"no Secret block {name!r} on the Prefect server") from None
    if not isinstance(block, Secret):  # the typing says "or a coroutine"; `_sync` rules it out
        raise PipelineError(f"the Secret block {name!r} was not loaded synchronously")
    value = block.get()
    if not isinstance(value, str) or not value:
        raise PipelineError(f"the Secret block {name!r} must hold a non-empty string")
    return SecretStr(value)
