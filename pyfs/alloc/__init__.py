"""Space allocation: the in-memory free-space index and the bucket allocator."""
