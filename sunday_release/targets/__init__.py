"""Deploy targets: two implementations of one blue-green protocol (`docker`, `kubernetes`)."""
