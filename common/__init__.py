"""What producer and consumers share: settings, events, the log, S3 access, keys."""
