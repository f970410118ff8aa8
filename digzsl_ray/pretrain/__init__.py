"""Generic foundation-model pretraining from any captioned image folder: small literal
architectures (:mod:`.arch`), the training loops (:mod:`.loops`) and the Ray Train job (:mod:`.job`)."""
