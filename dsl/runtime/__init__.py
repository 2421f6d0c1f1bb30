"""The machine a result ran on and progress bars: what every layer above may use."""
