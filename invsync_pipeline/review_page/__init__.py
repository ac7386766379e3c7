"""The review page for supervisors (`invsync review serve`)."""
