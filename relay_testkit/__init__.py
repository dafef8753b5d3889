"""Test and bench support, not part of the product (`pip install .` leaves it out): the
synthetic host, WHIP and WHEP clients, SDP fuzzers, lossy links and relay subprocesses.
It imports `relay` freely; `relay` never imports it (tests/test_layers.py)."""
