"""After the sweep: re-evaluating the top configurations and choosing one."""
