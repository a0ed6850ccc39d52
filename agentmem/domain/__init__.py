"""Pure decisions: ``decide`` turns state and a command into events, ``evolve`` folds events
into state. Nothing in this package does I/O, so every rule is unit-testable in microseconds.
"""
