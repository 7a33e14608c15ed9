"""``python -m trtq``: the same as the ``trtq`` command."""

from trtq.cli import main

if __name__ == "__main__":
    main()
