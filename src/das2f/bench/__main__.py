"""`python -m das2f.bench` (make bench): the CPU benchmark in das2f.bench.cpu."""
from .cpu import main

if __name__ == "__main__":
    main()
