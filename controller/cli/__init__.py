"""The `codeb` command line. It imports the rooms below it; nothing imports the CLI."""
