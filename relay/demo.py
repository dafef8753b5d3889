"""`relay serve --demo`: a show `demo` fed by a synthetic host through the server's own WHIP."""

from __future__ import annotations

import asyncio
import logging

from .app import Services
from .clients.synthetic import audio_track, encode_pattern, encode_tone, video_track
from .clients.whip import WhipClient

log = logging.getLogger(__name__)

DEMO_SHOW = "demo"


async def start_demo(services: Services) -> WhipClient:
    if await services.catalog.find(DEMO_SHOW):
        await services.removal.delete_show(DEMO_SHOW)  # a fresh show: no coupons or claims of the last run
    _, key = await services.catalog.create_show("Demo show", DEMO_SHOW)
    base = services.settings.base_url
    loop = asyncio.get_running_loop()
    video = await loop.run_in_executor(None, lambda: encode_pattern(1280, 720, 30, 4.0, 60, 2_000_000))
    audio = await loop.run_in_executor(None, encode_tone)
    client = WhipClient(f"{base}/whip/{DEMO_SHOW}", key, [audio_track(audio), video_track(video)])
    await client.start()
    await client.connected()
    print(f"relay: demo show is live; watch it at {base}/watch/{DEMO_SHOW}", flush=True)
    return client
