"""Synthetic forgeries cut from bundled photographs (or COCO outlines): the demo's
training and test data."""
