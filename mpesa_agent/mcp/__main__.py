import sys

from mpesa_agent.mcp.server import main

sys.exit(main())
