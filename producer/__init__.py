"""The producer: watches WATCH_DIR and appends file events to the log."""
