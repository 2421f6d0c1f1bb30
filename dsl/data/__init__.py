"""Corpora, audio, the log-Mel and SSL front ends, the feature cache and segments: audio in, frames out."""
