"""Fold jobs, the runners that execute them, and the step cache that shares them between chains."""
