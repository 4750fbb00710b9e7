"""`python -m agent ...`: the same as the `agent` console script."""

from agent.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
