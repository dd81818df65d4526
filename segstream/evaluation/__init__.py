"""How well: confusion matrices against ground truth, the scores made from them, the
Cityscapes results format, ground-truth conversion, offline evaluation and run reports."""
