"""``python -m search.prepare``: the command keeps its name; the code is
search/anchors/prepare.py."""
import sys

from search.anchors.prepare import main

if __name__ == "__main__":
    sys.exit(main())
