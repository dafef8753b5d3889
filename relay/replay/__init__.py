"""Recording and replay (built by the replay issue)."""
