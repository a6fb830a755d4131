"""`python -m edgecv ...` (also what `torchrun -m edgecv train ...` runs)."""
from edgecv.cli import main

if __name__ == "__main__":
    main()
