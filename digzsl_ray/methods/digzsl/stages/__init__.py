"""DIG-ZSL's stage modules: each wires one stage's maths to Ray and the run directory."""
