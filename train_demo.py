"""train_demo: not implemented yet (tracked by its own issue)."""

import sys

if __name__ == "__main__":
    sys.exit("train_demo.py: not implemented yet")
