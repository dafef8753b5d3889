"""Host publishing: the WHIP front-end and the publisher session."""
