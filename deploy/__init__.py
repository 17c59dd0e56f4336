"""Container deployment helpers: the image's healthcheck, the one-shot database setup, compose tests."""
