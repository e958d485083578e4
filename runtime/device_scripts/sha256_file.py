"""Prints a file's sha256 (hex): `python -c SOURCE PATH`, for devices without sha256sum or shasum.
Python 3.8-compatible."""

import hashlib
import sys


def main() -> None:
    digest = hashlib.sha256()
    with open(sys.argv[1], "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    print(digest.hexdigest())


if __name__ == "__main__":
    main()
