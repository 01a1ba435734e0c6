"""`python -m agelens`: the `agelens` command."""

from .cli import main

if __name__ == "__main__":
    main()
