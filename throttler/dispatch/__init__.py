"""One throttler run: lease and hand-over, receiving, planning, reserving, sending and settling."""
