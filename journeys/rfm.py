"""The named RFM segments: which recency and frequency scores make each one.

Pure: the RFM report (projections/analytics/reports.py) scores customers and
names their segment by this table; segment definitions compare it
(``{ rfm = "champions" }``, journeys/segment_definitions.py).
"""

from __future__ import annotations

# First match wins: (segment, lowest R, highest R, lowest F, highest F).
SEGMENTS: tuple[tuple[str, int, int, int, int], ...] = (
    ("champions", 4, 5, 4, 5),
    ("loyal", 3, 5, 3, 5),
    ("cannot_lose", 1, 2, 5, 5),
    ("at_risk", 1, 2, 3, 4),
    ("new_customers", 4, 5, 1, 1),
    ("potential_loyalists", 3, 5, 1, 2),
    ("hibernating", 1, 2, 1, 2),
)
# A buyer matching no row above.
NEEDS_ATTENTION = "needs_attention"
# Every name a buyer's RFM segment can have.
RFM_SEGMENTS: tuple[str, ...] = (*(row[0] for row in SEGMENTS), NEEDS_ATTENTION)
