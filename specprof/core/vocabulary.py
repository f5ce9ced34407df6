"""The names every layer shares: the whole-corpus domain, the engines. Constants only, no computation.

Draft kinds are named in `core/simulation/kinds.py` (the registry); the figures' definitions in
`core/glossary.py`.
"""

from __future__ import annotations

ALL = "ALL"  # the domain that stands for the whole corpus
