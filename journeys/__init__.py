"""The customer-journey domain, pure: stages, their rules and the journey aggregate."""
