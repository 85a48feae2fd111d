"""Shared specs, configuration, networks and wire types. Imports nothing from the project."""
