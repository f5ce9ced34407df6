"""Answers: what recommend, gate, compare, inspect and distill's evaluation tell the user.

A report read and traced (`analysis`), the decisions (`decide`), report against report (`compare`),
where a draft fails (`inspection`), an engine's counters and config (`engineplan`) and distill's
held-out bookkeeping (`distill_eval`). Each returns data (its `--json` document); formatting is the
UI's. May import every room before it: records → simulation → pricing → answers.
"""
