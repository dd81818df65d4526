"""segstream: streaming video segmentation over ZeroMQ. See docs/architecture.md for the parts."""
