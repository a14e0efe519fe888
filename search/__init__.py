"""The search engine: supernets, strategies, objectives, derivation."""
