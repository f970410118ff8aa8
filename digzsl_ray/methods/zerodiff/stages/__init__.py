"""ZeroDiff++'s stages (Ray wiring); the maths is in the package's plain-torch modules."""
