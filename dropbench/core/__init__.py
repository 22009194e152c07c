"""The base layer: errors, atomic io, run identity and records, config loading, model building, the export
format and data readers. It imports nothing from ``dropbench.pretrain``, ``dropbench.transfer`` or the entry
layer (cli, suite, demo, compare, plots); every other layer builds on it."""

from dropbench.core import orphans  # noqa: F401, E402 - forked workers die with their run (PR_SET_PDEATHSIG)
