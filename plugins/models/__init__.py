"""Model-family plugins (one file per family, timm-style)."""
