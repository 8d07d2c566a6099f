"""Suite definitions shipped as data (TOML), read by the ``builtin_suites`` plugin."""
