"""`python -m broker <command>`: only the entry point; the commands live in `cli/` (cli/main.py lists them).

This is the one module of `broker/` allowed to name `cli/`: it is the command's entry
point, not domain code, and nothing imports it. The command keeps the name it always had
(`python -m broker run | procfile | check-config | call | batch`).
"""

import sys

from cli.main import main

if __name__ == "__main__":
    sys.exit(main())
