"""Pure processing units: no Prefect or Ray in here."""
