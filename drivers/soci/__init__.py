"""The SOCI driver: an index (one ztoc per large layer) next to the image; no layer is rewritten."""
