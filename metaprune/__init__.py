"""metaprune."""
