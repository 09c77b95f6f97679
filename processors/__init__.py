"""Long-running graphwire components (runner, settings, CLI); each has start()/stop()."""
