"""Process-wide counts of what the media path did, read by /metrics.

Plain integers in dicts: the forwarding path only adds to them (no locks, no I/O, no labels
to look up), and the metrics endpoint reads them when it is scraped.
"""

from __future__ import annotations


class MediaMeter:
    def __init__(self) -> None:
        self.frames_sent = {"audio": 0, "video": 0}
        self.packets_sent = {"audio": 0, "video": 0}
        self.bytes_sent = {"audio": 0, "video": 0}
        self.frames_dropped = {"audio": 0, "video": 0}
        self.frames_received = {"audio": 0, "video": 0}
        self.packets_retransmitted = {"audio": 0, "video": 0}  # answers to viewers' NACKs
        self.loss_skips = 0  # viewers' video skipped to a keyframe for the losses they reported
        self.keyframe_requests_received = 0  # from viewers (and slow-viewer skips)
        self.keyframe_requests_sent = 0  # to hosts, after throttling


METER = MediaMeter()
