"""Distiller plugins (one file per method)."""
