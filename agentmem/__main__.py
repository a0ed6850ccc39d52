import sys

from agentmem.cli import main

sys.exit(main())
