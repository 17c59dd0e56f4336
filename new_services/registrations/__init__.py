"""Registrations: `POST /api/events/{id}/registrations`, `DELETE .../registrations/me`."""
