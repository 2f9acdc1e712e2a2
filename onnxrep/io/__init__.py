"""Model files: loading, checking and saving them atomically (``files``), and a graph's inputs read
from a file's header without loading its weights (``header``)."""
