"""Pictures: image grids, traversals and GIFs (images) and charts (plot), drawn with Pillow."""
