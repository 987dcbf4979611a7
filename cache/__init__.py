"""Tuned winners, stored through SQLAlchemy (SQLite by default, any SQLAlchemy URL)."""
from .winner import InvalidWinner, Winner, validate

__all__ = ["InvalidWinner", "Winner", "validate"]
