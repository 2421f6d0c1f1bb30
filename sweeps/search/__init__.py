"""The sweep itself: the Optuna search space and searcher behind Ray Tune, the launcher, its session and the end-of-sweep trial table."""
