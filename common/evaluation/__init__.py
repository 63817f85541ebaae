"""Scoring predictions: metrics, the three batch runners (localisation, three-class,
classifier), thresholds, baselines and the evaluating commands' options."""
