"""Cost models: analytical counts, table lookup, surrogates, expected cost."""
