"""Running on a Ray cluster: preflight checks (from the driver and from every node), shared storage, cluster tasks."""
