"""The base layer: errors, atomic io, run identity and records, config loading, model building, the export
format and data readers. It imports nothing from ``dropbench.pretrain``, ``dropbench.transfer`` or the entry
layer (cli, suite, demo, compare, plots); every other layer builds on it."""
