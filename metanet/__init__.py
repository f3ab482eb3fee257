"""metanet."""
