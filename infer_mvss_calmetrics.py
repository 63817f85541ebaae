"""infer_mvss_calmetrics: not implemented yet (tracked by its own issue)."""

import sys

if __name__ == "__main__":
    sys.exit("infer_mvss_calmetrics.py: not implemented yet")
