"""Shared foundation: configuration, database, logging, errors, crypto and TLS glue."""
