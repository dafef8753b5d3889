"""Session URLs in a cluster: the node that holds a WHIP or WHEP session names itself in the
session's URL, and a DELETE that reaches another node (behind one port or a load balancer)
is passed on to it."""

from __future__ import annotations

from dataclasses import dataclass
import logging
from typing import Callable

import aiohttp
from aiohttp import web

from ..cluster.nodes import NodeDirectory, route_key
from ..cluster.origins import Origin
from ..errors import ApiError

log = logging.getLogger(__name__)

SEPARATOR = "~"  # (never in a session id: those are URL-safe base64)
FORWARDED = "Relay-Forwarded"  # a request passed on once is not passed on again
_PASSED_HEADERS = ("Authorization", "Content-Type", "If-Match")


@dataclass(eq=False)
class SessionRoutes:
    """Names this node in the session URLs it hands out, and passes a session request that
    reached it to the node named in the URL."""

    nodes: NodeDirectory
    me: Callable[[], Origin]
    timeout_s: float = 10.0
    _http: aiohttp.ClientSession | None = None

    def session_ref(self, session_id: str) -> str:
        return f"{session_id}{SEPARATOR}{route_key(self.me().node)}"

    async def local_id(self, request: web.Request, ref: str) -> str | web.Response:
        """The session id to act on here, or the other node's response to the same request."""
        session_id, _, key = ref.partition(SEPARATOR)
        if not key or key == route_key(self.me().node) or FORWARDED in request.headers:
            return session_id
        node = await self.nodes.find(key)
        if node is None:
            raise ApiError(404, "session_not_found", "no such session (its node is gone)")
        return await self._forward(request, node)

    async def _forward(self, request: web.Request, node: Origin) -> web.Response:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        headers = {k: v for k, v in request.headers.items() if k in _PASSED_HEADERS} | {FORWARDED: "1"}
        try:
            async with self._http.request(request.method, node.url + request.path_qs, headers=headers,
                                          data=await request.read(),
                                          timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as res:
                body = await res.read()
                return web.Response(status=res.status, body=body, content_type=res.content_type)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("passing %s %s on to node %s failed: %s", request.method, request.path, node.node, exc)
            raise ApiError(502, "node_unreachable", f"the session's node {node.node} did not answer") from exc

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
