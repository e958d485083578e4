"""`python -m edgekit.runtime --plan PLAN --result RESULT`: run the device agent."""

import sys

from .agent import main

if __name__ == "__main__":
    sys.exit(main())
