"""Command-line tools: migm-train, migm-run."""
