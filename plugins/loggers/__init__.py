"""Logger plugins: observers of the lifecycle hooks that write what a run did (one file per logger)."""
