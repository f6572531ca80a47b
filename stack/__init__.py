"""The composition root: settings, wiring, the local stack and the `journeys` CLI."""
