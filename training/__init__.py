"""Training of the Durian model on Ray Train (built by the training issue; knows nothing of Prefect)."""
