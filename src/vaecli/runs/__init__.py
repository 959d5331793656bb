"""The run store: run folders, their config, weights and metrics files (store), the resume state (state), the fitted-prior files (priors) and the run options as TOML (options)."""
