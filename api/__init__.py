"""The HTTP gateway: Segment-compatible ingest, queries, health. The only HTTP code."""
