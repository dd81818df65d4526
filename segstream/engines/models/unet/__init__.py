"""U-Net (Ronneberger et al., MICCAI 2015)."""
