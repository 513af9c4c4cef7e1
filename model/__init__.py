"""AXM-Net: the network, its preprocessing, checkpoints, training and evaluation."""
