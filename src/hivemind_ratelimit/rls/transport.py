"""Which HTTP/2 stack serves the RLS port: `server.transport`.

- `nghttp2`: libnghttp2 driven from C, Python once per request (rls/h2server.py):
  about 35 µs of server CPU per realistic call here, 10-13x less than grpcio.
- `grpcio`: grpc.aio (rls/server.py), the reference stack: about 450 µs per call.
- `auto` (the default): nghttp2 when its native core can be built or loaded here (a C
  compiler and libnghttp2's headers, once), else grpcio, with a warning that says why.

Both take the same servicer and offer the same surface to the app. docs/performance.md
has the measurements behind the choice.
"""

from __future__ import annotations

import logging
from typing import Protocol

from hivemind_ratelimit.errors import SettingsError
from hivemind_ratelimit.rls.servicer import RateLimitServicer
from hivemind_ratelimit.settings import ServerSettings

log = logging.getLogger("hivemind.rls")


class RlsTransport(Protocol):
    addresses: list[str]

    async def start(self) -> None: ...

    async def set_serving(self, serving: bool) -> None: ...

    async def stop(self, grace: float) -> None: ...


def rls_server(settings: ServerSettings, servicer: RateLimitServicer) -> RlsTransport:
    """The RLS server for `settings.transport` (not started)."""
    if settings.transport in ("nghttp2", "auto"):
        from hivemind_ratelimit.rls.h2server import H2RlsServer

        try:
            server = H2RlsServer(settings, servicer)
        except SettingsError as exc:
            if settings.transport == "nghttp2":
                raise
            log.warning("RLS transport: grpcio, because nghttp2 is unavailable: %s", exc)
        else:
            log.info("RLS transport: nghttp2")
            return server
    from hivemind_ratelimit.rls.server import RlsServer

    log.info("RLS transport: grpcio")
    return RlsServer(settings, servicer)
