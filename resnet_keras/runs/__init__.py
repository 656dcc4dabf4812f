"""Layer 5: run directories: layout and config (rundir), checkpoint state (runstate), the writer lock
(runlock). Imports the layers below it.
"""
