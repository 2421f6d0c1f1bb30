"""One chain run with its result JSON and --resume, and seed-replicate studies."""
