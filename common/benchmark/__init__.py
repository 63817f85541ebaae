"""The accuracy benchmark: many test sets × degradations, one table, thresholds chosen
on one set."""
