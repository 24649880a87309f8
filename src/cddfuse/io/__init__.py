"""Image files, colour handling and folder pairing (numpy in, numpy out)."""
