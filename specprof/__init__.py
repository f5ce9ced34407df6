"""specprof: profile speculative-decoding acceptance before turning speculation on."""

__version__ = "0.1.0"
