"""The stores adapters keep examples in: ``visual_memory`` (the kNN store: add, search, delete,
attribution, on SQLite) and ``ann`` (an approximate index behind it, faiss IVF, when installed)."""
