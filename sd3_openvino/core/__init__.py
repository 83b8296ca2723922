"""The bottom layer: the converted folder's layout and reading, safe writes, presets and defaults (standard library only)."""
