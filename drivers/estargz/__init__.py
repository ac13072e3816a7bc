"""eStargz and zstd:chunked (stargz-snapshotter flavour): the driver and its layer writer."""
