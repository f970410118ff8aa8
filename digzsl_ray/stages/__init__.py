"""The stage framework shared by every method: the contract (:mod:`.contract`), the run directory
(:mod:`.rundir`), the shared prototypes stage (:mod:`.prototypes`) and the runner (:mod:`.runner`)."""
