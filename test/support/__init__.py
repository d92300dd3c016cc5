"""Helpers for tests: tiny offline models and local servers."""
