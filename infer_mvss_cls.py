"""infer_mvss_cls: not implemented yet (tracked by its own issue)."""

import sys

if __name__ == "__main__":
    sys.exit("infer_mvss_cls.py: not implemented yet")
