"""Ranking products for a photo: the matcher (grouped search, margin, domain correction),
the metric it learns from confirmations, and the catalog kept in step with product events."""
