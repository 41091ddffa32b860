"""The HTTP connection protocol `reasonflux serve` runs uvicorn with: its header timeout and idle-connection
eviction (uvicorn has neither)."""

from __future__ import annotations

from serve.limits import DEFAULT_MAX_CONNECTIONS_PER_CLIENT


def header_timeout_protocol(
    timeout_s: float, max_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT
) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete within
    timeout_s (uvicorn has no such limit: a client sending a header a minute would hold it forever).

    Idle connections (no request under way) do not crowd out new ones: a client address holding more than
    max_per_client connections, or a server at uvicorn's limit_concurrency, has its longest-idle connection
    closed to make room. Hundreds of idle sockets would otherwise fill the limit, and every client,
    /healthz included, would get 503 until their header timeouts ran out. Only when every connection is
    busy is the new one refused (503, as uvicorn refuses over its limit).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            peer = transport.get_extra_info("peername")
            self.client_host = peer[0] if isinstance(peer, tuple) and peer else None
            super().connection_made(transport)
            self.idle_since = self.loop.time()
            self._make_room()
            self._arm_header_timeout()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.idle_since = self.loop.time()
            self._arm_header_timeout()

        def _idle(self) -> bool:
            return not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete)

        def _make_room(self) -> None:
            others = [c for c in self.connections if c is not self and isinstance(c, HeaderTimeoutH11)]
            mine = [c for c in others if c.client_host == self.client_host]
            for crowd, cap in ((mine, max_per_client), (others, self.limit_concurrency)):
                if cap is None:
                    continue
                open_ = [c for c in crowd if not c.transport.is_closing()]
                excess = len(open_) + 1 - cap
                for c in sorted((c for c in open_ if c._idle()), key=lambda c: c.idle_since)[
                    : max(0, excess)
                ]:
                    c.transport.close()

        def _arm_header_timeout(self) -> None:
            self.loop.call_later(timeout_s, self._header_deadline, self.cycle)

        def _header_deadline(self, cycle_when_armed) -> None:
            if self.cycle is cycle_when_armed and not self.transport.is_closing():  # no new request began
                self.transport.close()

    return HeaderTimeoutH11
