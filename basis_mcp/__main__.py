import sys

from basis_mcp.cli import main

sys.exit(main())
