"""`python -m tunelab` is the `tunelab` command."""

from tunelab.cli import main

main()
