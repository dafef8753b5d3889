"""Viewers: the WHEP front-end, viewer sessions and the forwarding hot path."""
