from transferlab.cli import entry

entry()
