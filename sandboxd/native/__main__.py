"""``python -m sandboxd.native``: build the compiled stage runner."""

import sys

from sandboxd.native import main

sys.exit(main())
