"""Pipeline stages: each reads and writes the run directory (DESIGN section 3) and wires the
stage's maths (top-level modules: prototypes, cdm, dct, classifier, evaluate) to Ray."""
