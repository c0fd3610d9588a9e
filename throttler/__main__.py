"""`python -m throttler`: the command line (throttler/cli.py)."""

from throttler.cli import main

if __name__ == "__main__":
    main()
