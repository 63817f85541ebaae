"""Inputs as users have them: image and mask decoding, sources (list files, folders,
JSON, globs), mask rules, transforms and datasets."""
