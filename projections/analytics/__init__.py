"""Behaviour analysis over the ClickHouse event log.

Every query here has a plain-Python twin in :mod:`projections.analytics.reference`
that the property-based tests compare it with. All user input reaches SQL as
query parameters; identifiers come from allow-lists.
"""

from projections.analytics.errors import QueryProblem

__all__ = ["QueryProblem"]
