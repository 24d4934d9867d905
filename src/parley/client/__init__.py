"""Async Python SDK for Parley."""
