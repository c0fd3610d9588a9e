"""`python -m throttler`: the command line (throttler_tools/cli.py; not shipped in the Lambda zip)."""

from throttler_tools.cli import main

if __name__ == "__main__":
    main()
