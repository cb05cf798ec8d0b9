"""The ``avengers`` command. Each command is a thin twin of one library call."""
