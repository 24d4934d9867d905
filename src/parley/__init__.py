"""Parley: an instant-messaging server with durable, ordered history."""

__version__ = "0.1.0"
