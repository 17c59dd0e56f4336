"""Direct messages: `POST /api/users/{id}/messages`, delivered through the WebSocket hub."""
