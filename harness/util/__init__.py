"""Small helpers every package uses: atomic writes, hashing, progress, the file registry."""
