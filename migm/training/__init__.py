"""Training: datasets, VQ / classifier / base training, evaluation metrics."""
