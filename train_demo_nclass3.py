"""train_demo_nclass3: not implemented yet (tracked by its own issue)."""

import sys

if __name__ == "__main__":
    sys.exit("train_demo_nclass3.py: not implemented yet")
