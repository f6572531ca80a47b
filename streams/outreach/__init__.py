"""Outreach at the edge: trigger state, webhook and e-mail delivery, the trigger worker."""
