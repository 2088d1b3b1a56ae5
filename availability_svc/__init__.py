"""availability_svc package."""
