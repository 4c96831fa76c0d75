"""Shared test helpers: tiny random teachers of many families, mixer and generation checks."""
