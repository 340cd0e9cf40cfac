import sys

from reliability.report import main

sys.exit(main())
