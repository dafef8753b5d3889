"""Restreaming: a live show pushed over RTMP(S) to other platforms, H.264 as the host sent it
and AAC audio converted once per show."""
