"""The root of the toolkit's errors, and the one raised for bad settings."""

from __future__ import annotations


class ToolkitError(Exception):
    """Root of every error the toolkit raises on purpose."""


class ConfigError(ToolkitError):
    """A setting is missing or invalid; the message names it."""
