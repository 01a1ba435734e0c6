"""`python -m agelens`: the `agelens` command."""

from .cli import main

main()
