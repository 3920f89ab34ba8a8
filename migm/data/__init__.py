"""Training and evaluation data shipped inside wheels (nothing is downloaded): the animal-mnist
silhouettes, and the tiny captioned scenes made from them."""
