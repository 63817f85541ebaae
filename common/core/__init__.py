"""Shared by every stage: user errors and argument checks, devices and precision,
distributed helpers, checkpoint files, progress bars, reports, the release's fixed
numbers and score conventions."""
