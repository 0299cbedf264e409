# Root conftest: the ppbench pytest plugin (harness/plugin.py) holds options, hooks and fixtures.
