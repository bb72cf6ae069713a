"""`python -m lorsp.tracking relog ...` (see :mod:`lorsp.tracking.relog`)."""

import sys

from lorsp.tracking.relog import main

sys.exit(main())
