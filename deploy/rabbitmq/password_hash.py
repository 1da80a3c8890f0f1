#!/usr/bin/env python3
"""RabbitMQ password hashes for definitions.json (rabbit_password_hashing_sha256).

The algorithm: take 4 random salt bytes, compute SHA-256(salt + UTF-8 password),
and store base64(salt + digest). This is what RabbitMQ's internal auth backend
stores and what `password_hash` in a definitions file must hold.

    password_hash.py PASSWORD                 print a new hash (fresh salt)
    password_hash.py --verify HASH PASSWORD   exit 0 if HASH matches PASSWORD
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys


def make(password: str, salt: bytes | None = None) -> str:
    salt = os.urandom(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def verify(stored: str, password: str) -> bool:
    raw = base64.b64decode(stored, validate=True)
    if len(raw) != 4 + 32:
        return False
    return hmac.compare_digest(make(password, raw[:4]), stored)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and not argv[1].startswith("-"):
        print(make(argv[1]))
        return 0
    if len(argv) == 4 and argv[1] == "--verify":
        return 0 if verify(argv[2], argv[3]) else 1
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
