"""Runnable examples: the reference club-api."""
