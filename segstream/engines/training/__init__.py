"""``segstream train``: fine-tune or train zoo models on dataset layouts and class folders."""
