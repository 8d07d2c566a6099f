"""First-party kdbench plugins: one module per model family, dataset, method and suite set.

Each module is its own entry point in group ``kdbench`` and uses only the public
``kdbench`` API, exactly like a third-party plugin.
"""
