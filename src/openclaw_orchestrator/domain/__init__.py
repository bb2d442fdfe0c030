"""Pure domain logic: stdlib and ``errors`` only, no I/O, clock and randomness passed in."""
