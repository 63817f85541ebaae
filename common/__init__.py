"""Everything around the network: I/O, datasets, masks, transforms, losses, metrics."""
