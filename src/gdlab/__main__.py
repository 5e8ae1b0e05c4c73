"""`python -m gdlab` runs the same app as the `gdlab` console script."""

from gdlab.launch import main

if __name__ == "__main__":
    main()
