"""Encoders (backbones) of the zoo's architectures; see ``base`` for the contract."""
