"""booking_svc package."""
