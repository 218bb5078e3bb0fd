"""What the gateway knows about data before any table exists: inferred schemas."""
