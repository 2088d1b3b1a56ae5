"""eligibility_svc package."""
