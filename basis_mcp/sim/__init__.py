"""Local venue simulators that speak real exchange wire formats (for tests, benches and demos)."""
