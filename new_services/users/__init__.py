"""Users: `GET /api/users`, `GET /api/users/{id}`, and the `sessions` bearer tokens."""
