"""Fold plans (leak-free or transductive) and the choice of the reported iteration."""
