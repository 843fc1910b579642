"""The duet benchmark: every duet figure beside its limit (bare aiortc, bare TCP) measured in the same run."""
