"""Ending a WHIP or WHEP session from the client side: DELETE its URL. (POSTing the offer is
the product's, relay/demo/signaling.py, which the demo's publisher uses too.)"""

from __future__ import annotations

import aiohttp


async def delete_session(location: str, headers: dict[str, str] | None = None) -> None:
    """DELETE the session at `location`; a server that is gone already is no error."""
    try:
        async with aiohttp.ClientSession() as http:
            async with http.delete(location, headers=headers or {}):
                pass
    except aiohttp.ClientError:
        pass
