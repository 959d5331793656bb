"""`python -m vaecli` runs the CLI."""

from vaecli.cli import main

if __name__ == "__main__":
    main()
