"""The DSL chain over a fold plan, the fitted EmotionModel, and the config checks run before any work."""
