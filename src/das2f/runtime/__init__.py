"""What every entry point shares: the CLI glue, the project's errors, the thread policy, config helpers."""
