"""Service endpoints: `GET /health` and `GET /api/stats`."""
