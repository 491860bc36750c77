"""The loader: follows the segment files and loads their events into the event store.

Reached through `collector loader` (collector/cli.py calls `loader.daemon.main`); `python -m
loader` runs it directly with the default configuration, for tests and operators.
"""
