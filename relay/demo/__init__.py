"""`relay serve --demo`: a show `demo` fed by a synthetic host through the server's own WHIP.

The host's media comes from FFmpeg's lavfi test sources (`source.py`), pushed by a minimal
WHIP publisher (`whip.py`); the test and bench clients in relay_testkit build on both.
"""

from __future__ import annotations

import asyncio

from ..app import Services
from .source import audio_track, encode_pattern, encode_tone, video_track
from .whip import WhipPublisher

DEMO_SHOW = "demo"


async def start_demo(services: Services) -> WhipPublisher:
    """Create the show afresh and publish 720p30 at 2 Mbit/s with a tone; returns the publisher."""
    if await services.catalog.find(DEMO_SHOW):
        await services.removal.delete_show(DEMO_SHOW)  # a fresh show: no coupons or claims of the last run
    _, key = await services.catalog.create_show("Demo show", DEMO_SHOW)
    base = services.settings.base_url
    loop = asyncio.get_running_loop()
    video = await loop.run_in_executor(None, lambda: encode_pattern(1280, 720, 30, 4.0, 60, 2_000_000))
    audio = await loop.run_in_executor(None, encode_tone)
    publisher = WhipPublisher(f"{base}/whip/{DEMO_SHOW}", key, [audio_track(audio), video_track(video)])
    await publisher.start()
    await publisher.connected()
    print(f"relay: demo show is live; watch it at {base}/watch/{DEMO_SHOW}", flush=True)
    return publisher
