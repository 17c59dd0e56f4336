"""Realtime: `GET /ws` on the cross-instance WebSocket hub, and database trigger events."""
