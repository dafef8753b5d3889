"""livecast relay: one host stream in, an HQ room and distributor mirror rooms out."""

__version__ = "0.1.0"
