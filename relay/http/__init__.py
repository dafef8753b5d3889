"""HTTP front-ends: the admin and public API, WHIP, WHEP, pages, replay files and metrics,
and what they share (request helpers, limits, connection guard, middleware)."""
