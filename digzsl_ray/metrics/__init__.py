"""Metrics: ZSL top-1, calibrated GZSL U/S/H, AUSUC (:mod:`.zsl`); multi-label mAP/F1 will join."""
