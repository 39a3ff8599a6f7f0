"""`python -m tunelab` is the `tunelab` command."""

from tunelab.cli.main import main

main()
