"""The model: SatMAE's group-channel masked autoencoder (``satmae``), its encoder export, a torch+timm loader."""
