"""waitlist_svc package."""
