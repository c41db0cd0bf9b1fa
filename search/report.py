"""``python -m search.report``: the command keeps its name; the code is search/bench/report.py."""
import sys

from search.bench.report import main

if __name__ == "__main__":
    sys.exit(main())
