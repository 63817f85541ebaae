"""infer_3labels_merge_calmetrics: not implemented yet (tracked by its own issue)."""

import sys

if __name__ == "__main__":
    sys.exit("infer_3labels_merge_calmetrics.py: not implemented yet")
