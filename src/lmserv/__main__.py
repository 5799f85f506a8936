"""``python -m lmserv``: the same as the ``lmserv`` command."""

import sys

from lmserv.cli import main

if __name__ == "__main__":
    sys.exit(main())
