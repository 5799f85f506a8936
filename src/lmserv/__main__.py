import sys

from lmserv.cli import main

sys.exit(main())
