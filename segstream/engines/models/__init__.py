"""The model zoo: the factory table (``zoo.py``), shared layers and encoders, and one folder per architecture."""
