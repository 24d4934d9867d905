"""Presence backends: who is connected right now, keyed by user."""
