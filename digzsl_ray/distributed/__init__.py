"""The Ray plumbing every method shares: the local/remote cluster (:mod:`.cluster`), the
fault-tolerant actor pool (:mod:`.pool`), the Ray Train loop helpers (:mod:`.trainloop`) and fault
injection for tests (:mod:`.faults`). Nothing here knows a method."""
