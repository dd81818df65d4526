"""One network that segments and classifies in a single inference call."""
