import sys

from latentsurgeon.cli import main

sys.exit(main())
