"""`python -m lorsp.pareto`: the entry point only; the command is :mod:`lorsp.fronts`."""

from lorsp.fronts import main

if __name__ == "__main__":
    raise SystemExit(main())
