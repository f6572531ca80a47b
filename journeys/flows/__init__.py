"""Journey flows (issue 18): multi-step outreach as versioned definitions, run by a pure engine.

- :mod:`.definitions`: parsing and validation (errors as (path, message)), versions, the catalog;
- :mod:`.nodes`: the node kinds, one registered class each; :mod:`.conditions`: triggers
  and branch conditions; :mod:`.templates`: sandboxed Jinja2 messages;
- :mod:`.engine`: a customer's run advanced in event time; :mod:`.facts`: its decisions;
- :mod:`.backtest`: the same engine over recorded history, and the report.
"""
