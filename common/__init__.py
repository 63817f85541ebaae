"""Everything around the network (the network itself is in ``models/``), by stage.

Subpackages, lowest first; each imports only from those before it:

- ``core``: user errors and argument checks, devices and precision, distributed helpers,
  checkpoint files, progress, reports, the release's fixed numbers and score conventions.
- ``data``: image and mask decoding, sources (lists, folders, JSON, globs), mask rules,
  transforms, datasets.
- ``synth``: synthetic forgeries from bundled photographs (the demo's data).
- ``accel``: the inference fast path, Winograd, packed convolutions, int8.
- ``inference``: running a checkpoint: its settings and loader, single-image and batched
  prediction, the classifier's crop scores.
- ``evaluation``: metrics, the three batch runners, thresholds, baselines.
- ``training``: the engine, the three tasks, losses, optimiser, configs, loaders.
- ``benchmark``: many test sets × degradations, one table.
- ``app``: the web page's HTTP API.
"""
