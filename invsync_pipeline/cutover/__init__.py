"""The cutover from the old batch sync: modes and switches, pilot scope, the batch sync, readiness."""
