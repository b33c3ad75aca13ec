"""Analysis: diversity measures, statistics and the report."""
