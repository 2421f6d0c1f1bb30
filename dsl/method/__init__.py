"""The pieces of the method: label-update rules, alpha schedules and the utterance stages (forest, ACP)."""
