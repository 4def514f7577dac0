"""winnow orchestration: config, inputs, runners, manifests, stats, CLI."""
