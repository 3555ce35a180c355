"""Shared fixtures. Anything that makes a model or audio for several test modules lives here."""
