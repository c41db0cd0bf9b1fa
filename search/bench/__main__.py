"""``python -m search.bench``."""
import sys

from search.bench.core import main

sys.exit(main())
