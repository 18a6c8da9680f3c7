"""Live markets through ccxt: feeds, execution, and the wiring to point them at a venue."""
