"""Stage 1: train an image classifier under one dropout regime and export its backbone."""
