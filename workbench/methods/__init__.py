"""Research methods built on the hooked model: one module per method."""
