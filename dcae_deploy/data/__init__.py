"""Procedural captioned image data (coloured shapes) and a simple judge for generated images."""
