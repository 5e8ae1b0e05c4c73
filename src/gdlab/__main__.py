"""`python -m gdlab` runs the same app as the `gdlab` console script."""

from gdlab.cli import console_main

if __name__ == "__main__":
    console_main()
