"""``python -m autotune`` runs the command-line interface."""

from autotune.cli.main import main

if __name__ == "__main__":
    main()
