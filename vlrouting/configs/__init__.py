"""Packaged experiment configs (YAML) and architecture configs (arch/*.json)."""
