"""acceleration_sdk: convert container images to lazy-pulling formats (eStargz, zstd:chunked)."""
