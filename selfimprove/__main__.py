import sys

from selfimprove.cli import main

sys.exit(main())
