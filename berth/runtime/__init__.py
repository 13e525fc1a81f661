"""Runtime v2: tasks run by per-container shims that berthd starts and talks to over ttrpc."""
