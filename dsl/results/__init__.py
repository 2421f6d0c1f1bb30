"""Result files as tables and plots: statistics over seeds, the paper's tables, listener agreement."""
