"""Training loops (the frozen strategy: a decoder on served features)."""
