"""Run a named grid with Ray Tune: `python sweeps/launch.py GRID [key=value ...] [options]`.

Thin on purpose: `ray submit` copies only this file to the head node, so everything it needs
comes from the installed package (`python sweeps/launch.py --help` lists the options).
"""

import sys

from sweeps.cli import main

if __name__ == "__main__":
    sys.exit(main())
