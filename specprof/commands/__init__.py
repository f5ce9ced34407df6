"""Commands: the orchestration behind each CLI command that runs models (profile, verify, distill).

A command wires the core and an engine together for one job and reports progress through callbacks;
it never prints. The UI calls it and renders what it returns. See docs/design.md, "Layers".
"""
