"""Image classifiers: a ResNet encoder and a classification head."""
