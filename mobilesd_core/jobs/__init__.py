"""Jobs: the persistent queue (TinyDB snapshot + journal) and what a job is."""
