"""Tools that are not shipped in the Lambda zip: the CLI, local stack, demo, benchmark, fake API."""
