"""Row filters: the bit layout the scans test and the kernels that build it from id filters."""
