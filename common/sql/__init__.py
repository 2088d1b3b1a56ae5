"""SQL every service schema shares (outbox, inbox, extensions), applied by common.migrations."""
